"""FUSE passthrough to local copies (deltastore.passthrough), through a real mount of its own.

Needs libfuse >= 3.17 (Debian 12 ships 3.14) and root: set DELTASTORE_TEST_LIBFUSE317 to such a
libfuse3.so (the mount gets it as FUSE_LIBRARY_PATH; `.ci/libfuse317.sh` builds one, and CI does);
skipped, with the reason, otherwise.
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import deltastore
from deltastore.mount import parse_stats

from ..conftest import sha256_file
from deltastore.zoo.tiny import tiny_finetune, tiny_llama_dir

from .conftest import big_model, fuse_skip_reason, start_mount, stop_mount

LIB = os.environ.get("DELTASTORE_TEST_LIBFUSE317", "")


def _skip_reason() -> str | None:
    why = fuse_skip_reason()
    if why:
        return why
    if not LIB:
        return "set DELTASTORE_TEST_LIBFUSE317 to a libfuse3.so of 3.17 or later (.ci/libfuse317.sh builds one)"
    code = "import mfusepy; print(mfusepy.fuse_version_minor)"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FUSE_LIBRARY_PATH": LIB}, capture_output=True, text=True)
    if r.returncode != 0 or int(r.stdout.strip() or 0) < 17:
        return f"{LIB} is not libfuse >= 3.17: {r.stdout.strip() or r.stderr.strip()[-200:]}"
    if os.geteuid() != 0:
        return "passthrough needs root (CAP_SYS_ADMIN)"
    return None


@pytest.fixture(scope="module")
def pt(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    why = _skip_reason()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("passthrough")
    src = {"a": big_model(root / "a", seed=11), "b": big_model(root / "b", seed=12),
           "t": tiny_llama_dir(root / "t", seed=13)}
    src["t-ft"] = tiny_finetune(src["t"], root / "t-ft", seed=14, scale=5e-3)
    home = root / "home"
    with deltastore.open(home) as st:
        st.add_base("a", src["a"])
        st.add_base("b", src["b"])
        st.add_base("t", src["t"])
        st.add_finetune("t-ft", src["t-ft"], "t")  # delta-come: no sha256 to check its copy against
        st.checkout("t-ft", root / "t-ft-checkout")
    mp, log = root / "mnt", root / "mount.log"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("FUSE_LIBRARY_PATH", LIB)
        m.setenv("DELTASTORE_MOUNT_PASSTHROUGH", str(root / "copies") + ":64MiB")
        proc = start_mount(home, mp, log)
    yield mp, log, proc, src, root / "copies"
    stop_mount(mp, proc)
    assert not any((root / "copies").rglob("*")), "copies left after unmount"


def _stats(log: Path, proc: subprocess.Popen) -> dict[str, float]:
    """SIGUSR1 to the mount, then its next "requests so far" line, parsed."""
    seen = log.read_text().count("requests so far:")
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while log.read_text().count("requests so far:") <= seen:
        assert time.monotonic() < deadline, "no stats line"
        time.sleep(0.05)
    return parse_stats(log.read_text())


def _wait_copies(log: Path, proc: subprocess.Popen, n: int) -> dict[str, float]:
    deadline = time.monotonic() + 60
    while (st := _stats(log, proc))["copies"] < n:
        assert time.monotonic() < deadline, f"{n} copies not written in 60 s: {st}"
        time.sleep(0.2)
    return st


def test_a_file_read_once_is_then_served_by_passthrough(pt) -> None:  # noqa: ANN001
    mp, log, proc, src, _ = pt
    path = mp / "a" / "v1" / "model.safetensors"
    want = sha256_file(src["a"] / "model.safetensors")
    assert sha256_file(path) == want  # cold: the page-cache path, then a local copy is written
    before = _wait_copies(log, proc, 1)
    for _ in range(2):
        assert sha256_file(path) == want
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:  # mmap readers too
        assert m[-4096:] == (src["a"] / "model.safetensors").read_bytes()[-4096:]
    after = _stats(log, proc)
    assert after["open-passthrough"] - before.get("open-passthrough", 0) == 3, (before, after)
    assert after["MB read"] == before["MB read"]  # no READ reached the server


def test_a_file_open_in_the_page_cache_is_not_opened_for_passthrough(pt) -> None:  # noqa: ANN001
    """The kernel refuses one inode in both modes (EIO): while a page-cache handle is open, new
    opens stay in the page cache, even once the copy exists; after it closes they go passthrough."""
    mp, log, proc, src, _ = pt
    path = mp / "b" / "v1" / "model.safetensors"
    data = (src["b"] / "model.safetensors").read_bytes()
    held = open(path, "rb", buffering=0)
    try:
        assert held.read() == data
        first = _stats(log, proc)
        # the copy is written when a handle that read to the end closes: one more such reader
        with open(path, "rb", buffering=0) as f:
            assert f.read() == data
        _wait_copies(log, proc, first["copies"] + 1)
        mid = _stats(log, proc)
        with open(path, "rb", buffering=0) as f:  # `held` is open: page cache, not passthrough
            assert f.read() == data
        assert _stats(log, proc).get("open-passthrough", 0) == mid.get("open-passthrough", 0)
        held.seek(0)
        assert held.read() == data
    finally:
        held.close()
    time.sleep(0.3)  # RELEASE is sent after close() returns
    with open(path, "rb", buffering=0) as f, open(path, "rb", buffering=0) as g:
        assert f.read() == data and g.read() == data
    end = _stats(log, proc)
    assert end["open-passthrough"] - mid.get("open-passthrough", 0) == 2


def test_a_lossy_version_through_passthrough_equals_checkout(pt) -> None:  # noqa: ANN001
    """A delta-come file's copy is written from the reconstructed tensors (no sha256 of the added
    file applies to it): what passthrough serves must still be checkout's bytes."""
    mp, log, proc, src, _ = pt
    path = mp / "t-ft" / "v1" / "model.safetensors"
    want = (src["t-ft"].parent / "t-ft-checkout" / "model.safetensors").read_bytes()
    n = _stats(log, proc)["copies"]
    assert path.read_bytes() == want
    _wait_copies(log, proc, n + 1)
    before = _stats(log, proc)
    assert path.read_bytes() == want
    after = _stats(log, proc)
    assert after["open-passthrough"] == before.get("open-passthrough", 0) + 1


def test_passthrough_setting_auto_off_and_dir(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``auto`` (the default) turns passthrough on only where it can work and says so quietly
    otherwise; ``off`` is off; a folder asked for where it cannot work gets a warning."""
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:  # mfusepy raises OSError where libfuse is not installed
        pytest.skip(f"needs mfusepy with libfuse: {e}")
    from deltastore.mount import _spill_cache
    from deltastore.passthrough import DEFAULT_CAP_BYTES, default_cap, missing

    why = missing()
    caplog.set_level("INFO", logger="deltastore.mount")
    assert _spill_cache("off") is None and _spill_cache("OFF") is None
    assert not caplog.records
    with pytest.MonkeyPatch.context() as m:
        m.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        auto = _spill_cache(None)
        asked = _spill_cache(f"{tmp_path / 'copies'}:1MiB")
    if why:  # this process's libfuse or user cannot: off, info for auto, a warning when asked
        assert auto is None and asked is None
        levels = [(r.levelname, r.getMessage()) for r in caplog.records]
        assert levels == [("INFO", f"passthrough off: {why}"), ("WARNING", f"passthrough off: {why}")]
    else:
        try:
            assert auto is not None and auto.dir.parent == tmp_path / "xdg" / "deltastore" / "mount-copies"
            # the cap is measured at the start, from free space that other writers move a little
            assert 0 < auto.cap_bytes <= DEFAULT_CAP_BYTES and abs(auto.cap_bytes - default_cap(auto.dir)) < auto.cap_bytes / 100
            assert asked is not None and asked.cap_bytes == 1 << 20 and asked.dir.parent == tmp_path / "copies"
        finally:
            for s in (auto, asked):
                if s is not None:
                    s.close()


def test_auto_is_the_default_where_passthrough_works(pt, tmp_path: Path) -> None:  # noqa: ANN001
    """A mount started with no passthrough setting, where libfuse >= 3.17 and root allow it,
    serves a file read once by passthrough, keeps its copy under the user's cache folder and
    removes it at unmount."""
    _, _, _, src, _ = pt
    home = pt[0].parent / "home"
    mp, log = tmp_path / "mnt", tmp_path / "mount.log"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("FUSE_LIBRARY_PATH", LIB)
        m.delenv("DELTASTORE_MOUNT_PASSTHROUGH", raising=False)
        m.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        proc = start_mount(home, mp, log)
    try:
        path = mp / "t" / "v1" / "model.safetensors"
        want = sha256_file(src["t"] / "model.safetensors")
        assert sha256_file(path) == want
        _wait_copies(log, proc, 1)
        copies = list((tmp_path / "xdg" / "deltastore" / "mount-copies").rglob("*"))
        assert any(p.is_file() for p in copies), copies
        before = _stats(log, proc)
        assert sha256_file(path) == want
        assert _stats(log, proc)["open-passthrough"] == before.get("open-passthrough", 0) + 1
    finally:
        stop_mount(mp, proc)
    assert not any(p.is_file() for p in (tmp_path / "xdg").rglob("*")), "copies left after unmount"


def test_copies_of_a_mount_that_is_gone_are_removed_by_the_next(tmp_path: Path) -> None:
    """A mount killed before its unmount leaves its copies folder behind; the next mount using the
    same folder removes it, and keeps the folders of mounts still running."""
    from deltastore.passthrough import OWNER_FILE, SpillCache

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / "deltastore-passthrough-orphan"
    orphan.mkdir()
    (orphan / OWNER_FILE).write_text(str(dead.pid))
    (orphan / "copy").write_bytes(b"x" * 1000)
    alive = tmp_path / "deltastore-passthrough-alive"
    alive.mkdir()
    (alive / OWNER_FILE).write_text(str(os.getpid()))
    unknown = tmp_path / "deltastore-passthrough-unknown"  # no owner: not ours to judge
    unknown.mkdir()
    s = SpillCache(tmp_path, 1 << 20)
    try:
        assert not orphan.exists() and alive.exists() and unknown.exists()
        assert (s.dir / OWNER_FILE).read_text() == str(os.getpid())
    finally:
        s.close()
    assert not s.dir.exists()
