"""``deltastore``: the command line. Parses, prints, shows progress; the work is in deltastore.Store.

Global options (``--home``, ``-q``, ``--db-url``, ``--objects-url``) go before or after the command
(cli/options.py); everything printed passes through the redacting streams of cli/output.py; every
error the store raises is one line ``deltastore: error: ...`` and exit status 1 (:func:`main`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table
from rich.tree import Tree

from .options import HELP_DB, HELP_HOME, HELP_OBJECTS, HELP_QUIET, command, set_globals, state
from .output import emit_json, err, error, out, setup_logging, show_click_error
from .progress import human, progress_bar
from . import remote as remote_cli

app = typer.Typer(add_completion=False, no_args_is_help=True, help="A content-addressed store for model weights: "
                  "bases stored once, fine-tunes as compressed deltas.")
add_app = typer.Typer(no_args_is_help=True, help="Add a model version.")
db_app = typer.Typer(no_args_is_help=True, help="Catalog schema (Alembic migrations).")
app.add_typer(add_app, name="add")
app.add_typer(db_app, name="db")
remote_cli.register(app)  # remote add/ls/rm, push, pull, clone


@app.callback()
def _global(
    home: Optional[str] = typer.Option(None, "--home", help=HELP_HOME),  # DELTASTORE_HOME: read by load_config
    quiet: bool = typer.Option(False, "-q", "--quiet", help=HELP_QUIET),
    db_url: Optional[str] = typer.Option(None, "--db-url", help=HELP_DB),
    objects_url: Optional[str] = typer.Option(None, "--objects-url", help=HELP_OBJECTS),
    as_json: bool = typer.Option(False, "--json", help="Print data as JSON (the command's own --json)."),
) -> None:
    set_globals(home, quiet, db_url, objects_url, as_json)


def _group_globals(
    home: Optional[str] = typer.Option(None, "--home", help=HELP_HOME),
    quiet: bool = typer.Option(False, "-q", "--quiet", help=HELP_QUIET),
    db_url: Optional[str] = typer.Option(None, "--db-url", help=HELP_DB),
    objects_url: Optional[str] = typer.Option(None, "--objects-url", help=HELP_OBJECTS),
) -> None:
    """The global options between a group and its command (`deltastore db --home D upgrade`)."""
    for name, value in (("home", home), ("db_url", db_url), ("objects_url", objects_url)):
        if value is not None:
            setattr(state, name, value)
    state.quiet = state.quiet or quiet


add_app.callback()(_group_globals)
db_app.callback()(_group_globals)


def _store(read_only: bool = False):
    from deltastore.store import open_store

    return open_store(state.home, db_url=state.db_url, objects_url=state.objects_url, read_only=read_only)


def _config():
    from deltastore.config import load_config

    return load_config(state.home, db_url=state.db_url, objects_url=state.objects_url)


def _emit(data: Any, as_json: bool) -> bool:
    """Print ``data`` as JSON when asked; returns True when done."""
    if as_json:
        emit_json(data)
        return True
    return False


def _say(msg: str) -> None:
    if not state.quiet:
        out.print(msg)


# ----------------------------------------------------------------------------------------------
@command(app)
def init(
    directory: Optional[Path] = typer.Argument(None, help="Store home, as in `git init DIR` (same as --home DIR)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a store (config file + catalog schema), or bring an existing one's catalog schema
    up to date (the one command besides `db upgrade` that migrates a shared catalog)."""
    from deltastore.config import CONFIG_NAME, default_home, load_config, safe_url
    from deltastore.db import make_engine, upgrade
    from deltastore.errors import BadInputError
    from deltastore.store import init_store

    home = state.home
    if directory is not None:
        if home is not None and Path(home).expanduser().absolute() != directory.expanduser().absolute():
            raise BadInputError(f"two homes given: {directory} and --home {home}; give one")
        home = str(directory)
    home_p = Path(home).expanduser().absolute() if home else default_home().absolute()
    fresh = not (home_p / CONFIG_NAME).exists()
    try:
        cfg = load_config(home, db_url=state.db_url, objects_url=state.objects_url, create=True)
        engine = make_engine(cfg.db_url)
        try:
            before, after = upgrade(engine)
        finally:
            engine.dispose()
    except BaseException:
        if fresh:  # no config naming a catalog that cannot be used: `init` with the right URL starts over
            (home_p / CONFIG_NAME).unlink(missing_ok=True)
        raise
    st = init_store(home, db_url=state.db_url, objects_url=state.objects_url)
    info = {"home": str(st.config.home), "db_url": safe_url(st.config.db_url), "objects_url": safe_url(st.config.objects_url),
            "schema": after, "schema_before": before}
    st.close()
    if not _emit(info, as_json):
        _say(f"store at {info['home']}\n  catalog: {info['db_url']}\n  objects: {info['objects_url']}")


def _print_added(v, as_json: bool) -> None:
    if _emit(v.to_dict(), as_json):
        return
    base = f" on {v.base}" if v.base else ""
    _say(f"added {v.ref}{base} ({v.codec}): {human(v.logical_bytes)} of files, {human(v.stored_bytes)} newly stored "
         f"({v.ratio:.2f}x)  manifest {v.manifest[7:19]}")


FILE_SHA256_HELP = ("Also record each safetensors file's SHA-256 (as sha256sum prints it). Off by default: every "
                    "tensor's sha256 and the verbatim header already pin the file, and this one serial pass caps "
                    "the add at one core's hashing speed.")


@command(add_app, "base")
def add_base(
    name: str = typer.Argument(..., help="Model name."),
    path: Path = typer.Argument(..., help="Hugging Face model directory (safetensors)."),
    message: str = typer.Option("", "-m", "--message"),
    tag: list[str] = typer.Option([], "--tag", "-t", help="Tag the new version (repeatable)."),
    file_sha256: bool = typer.Option(False, "--file-sha256", help=FILE_SHA256_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Store a model losslessly as a new version of NAME."""
    st = _store()
    with progress_bar(f"add {name}", not as_json) as cb:
        v = st.add_base(name, path, message=message, tags=tag, progress=cb, file_sha256=file_sha256)
    _print_added(v, as_json)


def _codec_params(codec: str, alpha: Optional[str], bits: Optional[int], seed: Optional[int], param: list[str]) -> dict[str, Any]:
    from deltastore.errors import BadInputError

    cfg: dict[str, Any] = {"id": codec}
    if alpha is not None:
        cfg["alpha"] = alpha
    if bits is not None:
        cfg["bits"] = bits
    if seed is not None:
        cfg["seed"] = seed
    for p in param:
        k, eq, v = p.partition("=")
        if not eq:
            raise BadInputError(f"--param wants KEY=VALUE, got {p!r}")
        try:
            cfg[k] = json.loads(v)
        except ValueError:
            cfg[k] = v
    return cfg


@command(add_app, "finetune")
def add_finetune(
    name: str = typer.Argument(..., help="Model name for the fine-tune."),
    path: Path = typer.Argument(..., help="Hugging Face model directory (safetensors)."),
    base: str = typer.Option(..., "--base", "-b", help="Base version REF (NAME, NAME@v3, NAME@tag)."),
    codec: Optional[str] = typer.Option(None, "--codec", "-c", help="delta-come (default), lossless, lowrank, bitdelta, dare, deltadq."),
    alpha: Optional[str] = typer.Option(None, "--alpha", help="Size budget as a fraction of 16-bit weights, e.g. 1/16."),
    bits: Optional[int] = typer.Option(None, "--bits", help="Bits per value, for codecs that take one."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for randomized codecs."),
    param: list[str] = typer.Option([], "--param", "-p", help="Other codec parameter KEY=VALUE (JSON value)."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration text file (lines of text)."),
    message: str = typer.Option("", "-m", "--message"),
    tag: list[str] = typer.Option([], "--tag", "-t"),
    file_sha256: bool = typer.Option(False, "--file-sha256", help=FILE_SHA256_HELP),
    base_from: Optional[Path] = typer.Option(None, "--base-from", help="The base version's own files, if still on disk "
                                             "(e.g. the previous checkpoint): read, each tensor checked against the store's "
                                             "sha256, instead of decoded through the base's chain."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Store a fine-tune as compressed deltas against BASE."""
    from deltastore.store import DEFAULT_FINETUNE_CODEC

    cfg = _codec_params(codec or DEFAULT_FINETUNE_CODEC, alpha, bits, seed, param) if (codec or alpha or bits or seed is not None or param) else None
    st = _store()
    with progress_bar(f"add {name}", not as_json) as cb:
        v = st.add_finetune(name, path, base, codec=cfg, message=message, tags=tag, calib=calib, progress=cb,
                            file_sha256=file_sha256, base_from=base_from)
    _print_added(v, as_json)


@command(app)
def checkout(
    ref: str = typer.Argument(..., help="REF: NAME, NAME@v3, NAME@latest, NAME@tag, NAME@<sha-prefix>."),
    dest: Path = typer.Argument(..., help="Output directory (new or empty)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Convert floating tensors: bf16, fp16, fp32."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty directory."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write a version as a Hugging Face directory (byte-identical for lossless versions)."""
    st = _store(read_only=True)
    with progress_bar(f"checkout {ref}", not as_json) as cb:
        r = st.checkout(ref, dest, dtype=dtype, progress=cb, overwrite=force)
    if not _emit(r.to_dict(), as_json):
        how = "byte-identical to what was added (sha256 checked)" if r.exact else "decoded (lossy codec or --dtype)"
        _say(f"checked out {r.ref} to {r.out}: {r.files} files, {human(r.bytes_written)}, {how}, {r.seconds:.1f} s")


@command(app, "ls")
def ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """List models."""
    ms = _store(read_only=True).models()
    if _emit([m.to_dict() for m in ms], as_json):
        return
    t = Table("model", "kind", "versions", "latest", "files", "stored", box=None)
    for m in ms:
        t.add_row(m.name, m.kind, str(m.versions), f"v{m.latest}", human(m.logical_bytes), human(m.stored_bytes))
    out.print(t)


@command(app)
def log(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Versions of a model, newest first."""
    vs = list(reversed(_store(read_only=True).versions(name)))
    if _emit([v.to_dict() for v in vs], as_json):
        return
    for v in vs:
        tags = f" ({', '.join(v.tags)})" if v.tags else ""
        base = f" base {v.base}" if v.base else ""
        prev = (v.metrics or {}).get("series_previous")  # a checkpoint series: the save it followed (deltastore.chains)
        base += f" (saved after {prev})" if prev and prev != v.base else ""
        out.print(f"[bold]{v.ref}[/bold]{tags}  {v.manifest[7:19]}  {v.created_at:%Y-%m-%d %H:%M} {v.author}")
        out.print(f"    {v.codec}{base}  {human(v.logical_bytes)} -> {human(v.stored_bytes)} ({v.ratio:.2f}x)")
        if v.message:
            out.print(f"    {v.message}")


@command(app)
def show(ref: str, as_json: bool = typer.Option(False, "--json"), tensors: bool = typer.Option(True, "--tensors/--no-tensors")) -> None:
    """Files, tensors, codec per tensor, sizes, ratios and lineage of a version."""
    from deltastore.report import version_report

    st = _store(read_only=True)
    rep = version_report(st, ref)
    if _emit(rep, as_json):
        return
    v = rep["version"]
    out.print(f"[bold]{v['ref']}[/bold]  manifest {v['manifest']}")
    out.print(f"  kind {v['kind']}  codec {v['codec']} {json.dumps(v['codec_params']) if v['codec_params'] else ''}")
    if v["base"]:
        out.print(f"  base {v['base']}   ancestors: {' <- '.join(rep['lineage']['ancestors'])}")
    lin = f"  linears-only ratio {rep['ratio_linears']:.2f}x" if rep["ratio_linears"] else ""
    out.print(f"  files {human(v['logical_bytes'])}  stored (new) {human(v['stored_bytes'])}  whole-model ratio {rep['ratio_whole']:.2f}x{lin}")
    if v["tags"]:
        out.print(f"  tags {', '.join(v['tags'])}")
    if v["message"]:
        out.print(f"  message: {v['message']}")
    for f in rep["files"]:
        sha = f"sha256 {f['sha256'][:16]}…" if f["sha256"] else "tensors and header checked by their sha256"
        out.print(f"  [bold]{f['path']}[/bold]  {human(f['size'])}  {sha}")
    if tensors:
        t = Table("tensor", "dtype", "shape", "source", "codec", "stored", "bpp", "rel.err", box=None)
        for x in rep["tensors"]:
            t.add_row(x["name"], x["dtype"], "x".join(map(str, x["shape"])), x["source"], x["codec"] or "-",
                      human(x["stored"]), f"{x['bpp']:.3f}" if x["bpp"] is not None else "-",
                      f"{x['rel_error']:.4f}" if x.get("rel_error") is not None else "-")
        out.print(t)


@command(app)
def tag(ref: str, name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Point tag NAME at the version REF names (moves it if it exists)."""
    v = _store().tag(ref, name)
    if not _emit(v.to_dict(), as_json):
        _say(f"tagged {v.ref} as {v.model}@{name}")


@command(app)
def lineage(ref: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Ancestors and descendants of a version, as a tree."""
    lin = _store(read_only=True).lineage(ref)
    if _emit(lin.to_dict(), as_json):
        return
    root = Tree(" <- ".join([f"[bold]{lin.ref}[/bold]"] + lin.ancestors) if lin.ancestors else f"[bold]{lin.ref}[/bold]")

    def add(node, t):  # noqa: ANN001
        for c in node.children:
            add(c, t.add(f"{c.ref} ({c.codec})"))

    add(lin.tree, root)
    out.print(root)


@command(app)
def diff(a: str, b: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Tensors that differ between two versions, and by how much."""
    ds = _store(read_only=True).diff(a, b)
    if _emit([d.to_dict() for d in ds], as_json):
        return
    if not ds:
        _say("no tensor differs")
        return
    t = Table("tensor", "status", "max |b-a|", "||b-a||/||a||", "changed", box=None)
    for d in ds:
        t.add_row(d.name, d.status, f"{d.max_abs:.3g}" if d.max_abs is not None else "-",
                  f"{d.rel_fro:.3g}" if d.rel_fro is not None else "-",
                  f"{100 * d.changed_frac:.1f}%" if d.changed_frac is not None else "-")
    out.print(t)


@command(app)
def rm(ref: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Remove a version from the catalog; `gc` then frees what nothing references."""
    v = _store().rm(ref)
    if not _emit(v.to_dict(), as_json):
        _say(f"removed {v.ref}; run `deltastore gc` to free its objects")


@command(app)
def gc(dry_run: bool = typer.Option(False, "--dry-run", "-n"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Delete objects no version references (never those an add in progress may need)."""
    r = _store().gc(dry_run=dry_run)
    if not _emit(r.to_dict(), as_json):
        verb = "would delete" if dry_run else "deleted"
        _say(f"{verb} {r.deleted} objects ({human(r.freed_bytes)}), {r.temp_deleted} temp files; "
             f"kept {r.kept_recent} recent (an add is in progress)")
        if r.other_versions or r.unreadable:
            _say(f"kept the objects of {r.other_versions} versions of other catalogs on these objects"
                 + (f"; {len(r.unreadable)} records unreadable (first: {r.unreadable[0]})" if r.unreadable else ""))


@command(app)
def verify(ref: Optional[str] = typer.Argument(None), as_json: bool = typer.Option(False, "--json"),
           repair: list[str] = typer.Option([], "--repair", metavar="REMOTE", help="Replace missing or corrupt objects "
                                            "with good copies from REMOTE (repeatable: tried in order).")) -> None:
    """Re-hash objects; name what is missing or corrupt and which versions it breaks."""
    if repair:
        if not remote_cli.repair(ref, repair, as_json):
            raise typer.Exit(1)
        return
    r = _store(read_only=True).verify(ref)
    if not _emit(r.to_dict(), as_json):
        if r.ok:
            _say(f"ok: {r.versions} versions, {r.objects} objects, {human(r.bytes_read)} re-hashed")
        for p in r.problems:
            err.print(f"{p.oid or '-'}: {p.what}; breaks {', '.join(p.versions)}", markup=False, highlight=False, soft_wrap=True)
    if not r.ok:
        raise typer.Exit(1)


@command(app)
def du(as_json: bool = typer.Option(False, "--json")) -> None:
    """Logical vs stored bytes, and what dedup saved."""
    r = _store(read_only=True).du()
    if not _emit(r.to_dict(), as_json):
        out.print(f"{r.versions} versions, {r.objects} objects")
        out.print(f"  files as added     {human(r.logical_bytes)}")
        out.print(f"  stored             {human(r.stored_bytes)}  ({r.logical_bytes / max(r.stored_bytes, 1):.2f}x)")
        out.print(f"  saved by dedup     {human(r.dedup_saved_bytes)}")


@command(db_app, "upgrade")
def db_upgrade(as_json: bool = typer.Option(False, "--json")) -> None:
    """Apply pending catalog migrations (under a lock: safe while other clients run)."""
    from deltastore.db import make_engine, upgrade

    engine = make_engine(_config().db_url)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if not _emit({"before": before, "after": after}, as_json):
        _say(f"catalog at revision {after}" + (f" (was {before})" if before != after else " (up to date)"))


@command(db_app, "rebuild")
def db_rebuild(as_json: bool = typer.Option(False, "--json")) -> None:
    """Fill an empty catalog from the version records and manifests on the object store."""
    st = _store()
    r = st.rebuild_catalog()
    if not _emit(r.to_dict(), as_json):
        from deltastore.config import safe_url

        _say(f"rebuilt {r.versions} versions, {r.tags} tags, {r.objects} objects from {safe_url(st.config.objects_url)}")
        if r.too_deep:  # imported, but no checkout rebuilds their tensors: said, not found later
            _say(f"{len(r.too_deep)} versions have a base chain deeper than deltastore rebuilds tensors through "
                 f"(first: {r.too_deep[0]})")
        if r.skipped:
            _say(f"{len(r.skipped)} records not imported (first: {r.skipped[0]}); --json lists them all")


@command(db_app, "current")
def db_current(as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the catalog's schema revision and the one this deltastore needs."""
    from deltastore.db import current_revision, head_revision, known_revisions, make_engine

    engine = make_engine(_config().db_url)
    try:
        cur = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    status = "up to date" if cur == head else "newer than this deltastore" if cur and cur not in known_revisions() else "behind"
    if not _emit({"revision": cur, "head": head, "status": status}, as_json):
        out.print(f"{cur} (head {head}, {status})")


@command(app)
def demo(
    workdir: Path = typer.Option(Path(".deltastore-demo"), "--workdir", help="Where the demo's store and files go."),
    steps: int = typer.Option(30, "--steps", help="Fine-tuning steps on the CPU."),
) -> None:
    """End to end on real weights: SmolLM2 base + a real fine-tune, add, checkout, load, generate."""
    from deltastore.demo import run_demo

    run_demo(workdir, steps=steps, say=out.print)


from .mount import register as _register_mount  # noqa: E402  (mount / unmount live in cli/mount.py)

_register_mount(app)


def quiet_openmp() -> None:
    """Ask OpenMP (torch's CPU thread pool, libgomp) to wait for work asleep, not spinning, unless the
    user chose (OMP_WAIT_POLICY set). Only for this command's own process, and only before torch is
    imported, which is when libgomp reads it. Why: a lossy delta's CPU decode is many mid-sized
    matmuls, and after each one libgomp's idle threads spin; where the other cores are busy (a
    shared machine, a mount beside the job reading it, the store's own workers) the spinning threads
    and the ones doing work take turns on the cores. Measured on the dev VM (2 cores, load ~2):
    decoding a SmolLM2 delta-come fine-tune took 9.3-12.7 s of CPU with spinning, 2.2 s asleep, 3.0
    s on one thread (results/openmp_wait_amd-epyc-2c.md)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> None:
    """The console script: runs one command; every error the store raises (and a catalog or
    storage failure) is one redacted line on stderr and exit status 1, never a traceback."""
    quiet_openmp()
    from sqlalchemy.exc import SQLAlchemyError

    from deltastore.codec.errors import CodecError
    from deltastore.errors import DeltaStoreError

    setup_logging()
    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv, prog_name="deltastore", standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except (DeltaStoreError, CodecError, OSError) as e:
        error(str(e))
        sys.exit(1)
    except SQLAlchemyError as e:
        orig = getattr(e, "orig", None)
        error(f"catalog: {orig if orig is not None else e}".splitlines()[0])
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:
        # click (vendored by newer typer as typer._click): usage errors, Exit, Abort
        names = {c.__name__ for c in type(e).__mro__}
        if "Exit" in names:
            sys.exit(getattr(e, "exit_code", 0))
        if "Abort" in names:
            err.print("aborted")
            sys.exit(130)
        if "ClickException" in names:
            show_click_error(e)
            sys.exit(getattr(e, "exit_code", 2))
        _internal_error(e)
        sys.exit(1)


def _internal_error(e: BaseException) -> None:
    """A bug, not a refusal: the traceback helps whoever reports it, with secrets masked."""
    import traceback

    from .output import stderr

    stderr.write("".join(traceback.format_exception(e)))
    error(f"internal error ({type(e).__name__}): {e}; please report it with the lines above")


if __name__ == "__main__":
    main()
