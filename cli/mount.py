"""``deltastore mount`` / ``deltastore unmount``: parse, start, report; the filesystem is
deltastore.mount.

Without ``--foreground`` the mount is served by a child process (``deltastore mount --foreground``
started in a session of its own, its log lines going to ``--log``); this command returns once the
mount is up, or fails with the child's last log lines. The store's URLs reach the child through
the environment, never its command line (which any user can read in ``ps``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from .options import command, state
from .output import out


def register(app: typer.Typer) -> None:
    """Add ``mount`` and ``unmount`` to the ``deltastore`` app."""
    command(app, "mount")(mount)
    command(app, "unmount")(unmount)


def mount(
    mountpoint: Path = typer.Argument(..., help="An existing directory to mount on (what it holds is hidden while mounted)."),
    cache_size: str = typer.Option("4GiB", "--cache-size", help="Byte cap of the decoded-unit cache shared by all open files."),
    foreground: bool = typer.Option(False, "--foreground", "-f", help="Serve in this process until unmounted."),
    allow_other: bool = typer.Option(False, "--allow-other", help="Let other users read the mount (needs user_allow_other in /etc/fuse.conf)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Re-hash every lossless tensor as it is decoded (EIO, never wrong bytes); --no-verify fetches and decodes only the chunks of 64 MiB segments that are read, unchecked."),
    ttl: float = typer.Option(1.0, "--ttl", help="Seconds before new versions and moved tags show."),
    log: Optional[Path] = typer.Option(None, "--log", help="Log file of a background mount (default: in the temp dir)."),
    wait: float = typer.Option(60.0, "--wait", help="Seconds to wait for a background mount to come up."),
    passthrough: Optional[str] = typer.Option(None, "--passthrough", metavar="auto|off|DIR[:SIZE]",
                                              help="Serve files already read by FUSE passthrough from local copies (warm reads at "
                                                   "local-disk speed). auto (default, or DELTASTORE_MOUNT_PASSTHROUGH): on where "
                                                   "libfuse >= 3.17 and root allow it, copies in ~/.cache/deltastore/mount-copies, "
                                                   "at most 8GiB or a quarter of the free space; DIR[:SIZE]: there, at most SIZE."),
) -> None:
    """Mount every version read-only at MOUNTPOINT/NAME/vN (plus `latest` and tags as symlinks)."""
    from deltastore.errors import BadInputError
    from deltastore.filecache import parse_size
    from deltastore.mount import MountError, fuse_missing, serve

    cap = parse_size(cache_size)
    mp = mountpoint.expanduser().absolute()
    if not mp.is_dir():
        raise BadInputError(f"{mp} is not a directory; create it first")
    if os.path.ismount(mp):
        raise MountError(f"{mp} is already a mount point")
    why = fuse_missing()
    if why:
        raise MountError(f"cannot mount: {why}")
    if foreground:
        from deltastore.store import open_store

        st = open_store(state.home, db_url=state.db_url, objects_url=state.objects_url, read_only=True)
        try:
            serve(st, mp, cache_bytes=cap, verify=verify, ttl=ttl, allow_other=allow_other, passthrough=passthrough)
        finally:
            st.close()
        return
    log_path = (log or Path(tempfile.gettempdir()) / f"deltastore-mount-{os.getuid()}-{mp.name or 'root'}.log").absolute()
    env = dict(os.environ)
    for var, value in (("DELTASTORE_HOME", state.home), ("DELTASTORE_DB_URL", state.db_url),
                       ("DELTASTORE_OBJECTS_URL", state.objects_url)):
        if value:
            env[var] = str(value)
    args = [sys.executable, "-m", "deltastore.cli", "mount", str(mp), "--foreground", "--cache-size", str(cap),
            "--ttl", str(ttl), "--verify" if verify else "--no-verify"]
    if allow_other:
        args.append("--allow-other")
    if passthrough:
        args += ["--passthrough", passthrough]
    with open(log_path, "ab") as lf:
        child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, env=env, start_new_session=True)
    deadline = time.monotonic() + wait
    while not os.path.ismount(mp):
        if child.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise MountError(f"the mount process exited ({child.returncode}): {' | '.join(tail) or 'no output'}")
        if time.monotonic() > deadline:
            child.terminate()
            raise MountError(f"{mp} did not come up within {wait:.0f} s; see {log_path}")
        time.sleep(0.05)
    if not state.quiet:
        out.print(f"mounted at {mp} (pid {child.pid}, log {log_path}); `deltastore unmount {mp}` to stop")


def unmount(mountpoint: Path = typer.Argument(..., help="A deltastore mount point.")) -> None:
    """Unmount; if files are still open, say which processes hold them."""
    from deltastore.mount import unmount as do_unmount

    mp = mountpoint.expanduser().absolute()
    do_unmount(mp)
    if not state.quiet:
        out.print(f"unmounted {mp}")
