"""``remote add/ls/rm``, ``push``, ``pull``, ``clone``, and ``verify --repair``: moving versions
between stores. Registered on the main app by :func:`register` (``verify`` calls :func:`repair`);
the work is in ``deltastore.remotes``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from .options import command, state
from .output import emit_json, err, error, out
from .progress import human, progress_bar

remote_app = typer.Typer(no_args_is_help=True, help="Other stores this one pushes to and pulls from.")


def _home() -> Path:
    from deltastore.config import default_home

    return Path(state.home).expanduser().absolute() if state.home else default_home().absolute()


def _store():
    from deltastore.store import open_store

    return open_store(state.home, db_url=state.db_url, objects_url=state.objects_url)


def _say(msg: str) -> None:
    if not state.quiet:
        out.print(msg, markup=False, highlight=False)


def _options(pairs: list[str]) -> dict[str, Any]:
    """``-o KEY=VALUE`` storage options; a dotted KEY nests (``client_kwargs.endpoint_url=...``);
    a VALUE that parses as JSON is taken as JSON."""
    from deltastore.errors import BadInputError

    opts: dict[str, Any] = {}
    for p in pairs:
        k, eq, v = p.partition("=")
        if not eq or not k:
            raise BadInputError(f"-o wants KEY=VALUE, got {k or p!r}")
        try:
            val: Any = json.loads(v)
        except ValueError:
            val = v
        d = opts
        *parents, leaf = k.split(".")
        if not all(parents) or not leaf:
            raise BadInputError(f"-o {k}: an empty part in a dotted KEY")
        for part in parents:
            d = d.setdefault(part, {})
            if not isinstance(d, dict):
                raise BadInputError(f"-o {k}: {part} is already given a value, so it cannot hold {leaf}")
        d[leaf] = val
    return opts


# ----------------------------------------------------------------------------------------------
@command(remote_app, "add")
def remote_add(
    name: str = typer.Argument(..., help="A name for the remote, e.g. origin."),
    url: str = typer.Argument(..., help="Its objects URL: a directory or any fsspec URL (s3://bucket/prefix)."),
    db: Optional[str] = typer.Option(None, "--db", help="Its catalog URL; without one, the records beside its objects are its catalog."),
    option: list[str] = typer.Option([], "-o", "--option", help="fsspec storage option KEY=VALUE (dotted keys nest)."),
    force: bool = typer.Option(False, "--force", help="Replace a remote of that name."),
    lazy: bool = typer.Option(False, "--lazy", help="Pull a REF this store lacks from it on first use (as a clone does)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Name another store to push to and pull from (kept in the home's remotes.toml, mode 0600)."""
    from deltastore.remotes import add_remote

    r = add_remote(_home(), name, url, db_url=db, storage_options=_options(option), replace=force, lazy=lazy)
    if as_json:
        emit_json(r.to_dict())
    else:
        _say(f"added {r.label}" + (" with its catalog" if r.db_url else ""))


@command(remote_app, "ls")
def remote_ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """List remotes."""
    from deltastore.remotes import load_remotes

    rs = [r.to_dict() for r in load_remotes(_home()).values()]
    if as_json:
        emit_json(rs)
        return
    t = Table("remote", "url", "catalog", "lazy", box=None)
    for r in rs:
        t.add_row(r["name"], r["url"], r["db_url"] or "(records beside its objects)", "yes" if r["lazy"] else "")
    out.print(t)


@command(remote_app, "rm")
def remote_rm(name: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """Forget a remote (nothing on it changes)."""
    from deltastore.remotes import remove_remote

    r = remove_remote(_home(), name)
    if as_json:
        emit_json(r.to_dict())
    else:
        _say(f"removed {r.label}")


def _report(results: list, as_json: bool) -> None:
    if as_json:
        emit_json([r.to_dict() for r in results])
        return
    for r in results:
        verb = "pushed" if r.direction == "push" else "pulled"
        new = [m.dst for m in r.new_versions]
        where = f"to {r.remote}" if r.direction == "push" else f"from {r.remote}"
        head = f"{verb} {r.ref} {where} as {r.dst_ref}" if new else f"{r.ref} is already on the other side as {r.dst_ref}"
        _say(f"{head}: {r.objects_sent} objects, {human(r.bytes_sent)} sent, {r.objects_present} already there"
             + (f"; new: {', '.join(new)}" if new else "") + (f"; tags: {', '.join(r.tags)}" if r.tags else "")
             + f" ({r.seconds:.1f} s)")
        for t in r.tags_left:  # a transfer never moves a tag: say which it left, and where
            here, src = t.at.rpartition("@")[2], t.source_at.rpartition("@")[2]
            if r.direction == "pull":
                _say(f"tag {t.tag} left at {here} (the remote has it on {src}; --move-tags, or "
                     f"`deltastore tag {t.source_at} {t.tag.rpartition('@')[2]}`, moves it)")
            else:
                _say(f"tag {t.tag} left at {here} on {r.remote} (this store has it on what is {src} there; --move-tags moves it)")


def _split(ref: Optional[str], remote: Optional[str], many: bool) -> tuple[Optional[str], Optional[str]]:
    """With --all or --tag, a lone argument that names a remote is the remote, not a REF."""
    if many and ref is not None and remote is None:
        from deltastore.remotes import load_remotes

        if ref in load_remotes(_home()):
            return None, ref
    return ref, remote


def push(
    ref: Optional[str] = typer.Argument(None, help="REF to push (with its base chain and tags)."),
    remote: Optional[str] = typer.Argument(None, help="Remote name or URL (default: origin, or the only one)."),
    all_versions: bool = typer.Option(False, "--all", help="Every version (of REF's model if given, else of every model)."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Every version tagged TAG (of REF's model if given, else of every model)."),
    no_tags: bool = typer.Option(False, "--no-tags", help="Do not set tags on the remote."),
    move_tags: bool = typer.Option(False, "--move-tags", help="Move a tag the remote has on another version (by default it is left there, and said)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Send versions to a remote: only the objects it lacks; each appears there once all its objects have.
    With --all or --tag, a version this store holds badly is reported (one line each) and skipped, the
    others are pushed, and the exit status is 1."""
    from deltastore.errors import PushRefusedError
    from deltastore.remotes import push as do_push

    ref, remote = _split(ref, remote, all_versions or tag is not None)
    st = _store()
    try:
        with progress_bar(f"push {ref or (f'@{tag}' if tag else 'all')}", not as_json) as cb:
            res = do_push(st, ref, remote, all_versions=all_versions, tagged=tag, tags=not no_tags, progress=cb,
                          move_tags=move_tags)
    except PushRefusedError as e:
        _refused(e, as_json)
    _report(res, as_json)


def pull(
    ref: Optional[str] = typer.Argument(None, help="REF on the remote (with its base chain and tags)."),
    remote: Optional[str] = typer.Argument(None, help="Remote name or URL (default: origin, or the only one)."),
    all_versions: bool = typer.Option(False, "--all", help="Every version (of REF's model if given, else of every model)."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Every version tagged TAG there (of REF's model if given, else of every model)."),
    no_tags: bool = typer.Option(False, "--no-tags", help="Do not set tags here."),
    move_tags: bool = typer.Option(False, "--move-tags", help="Move a tag this store has on another version (by default it is left there, and said)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fetch versions from a remote into this store (numbered here, committed like an add). With
    --all or --tag, a version the remote holds badly is reported (one line each) and skipped, the
    others are pulled, and the exit status is 1."""
    from deltastore.errors import PullRefusedError
    from deltastore.remotes import pull as do_pull

    ref, remote = _split(ref, remote, all_versions or tag is not None)
    st = _store()
    try:
        with progress_bar(f"pull {ref or (f'@{tag}' if tag else 'all')}", not as_json) as cb:
            res = do_pull(st, ref, remote, all_versions=all_versions, tagged=tag, tags=not no_tags, progress=cb,
                          move_tags=move_tags)
    except PullRefusedError as e:
        _refused(e, as_json)
    _report(res, as_json)


def _refused(e, as_json: bool) -> None:  # noqa: ANN001 (a TransferRefusedError)
    """What a push or pull of many moved, as ever, then one error line for each version it refused; exit 1."""
    _report(e.results, as_json)
    for x, why in e.refused:
        error(f"{x} not {e.verb}: {why}")
    raise typer.Exit(1) from None


def clone(
    url: str = typer.Argument(..., help="The remote store's objects URL (a directory or s3://bucket/prefix)."),
    directory: Optional[Path] = typer.Argument(None, help="Home of the new store (same as --home DIR)."),
    db: Optional[str] = typer.Option(None, "--db", help="The remote's catalog URL, if it has one."),
    option: list[str] = typer.Option([], "-o", "--option", help="fsspec storage option KEY=VALUE for the remote."),
    name: str = typer.Option("origin", "--name", help="What to call the remote here."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A new local store that tracks a remote: nothing is pulled now; a REF it lacks is pulled on first use
    (checkout, load, the mount) or with `deltastore pull REF`."""
    from deltastore.remotes import clone as do_clone
    from deltastore.store import Store, init_store

    home = directory if directory is not None else (Path(state.home) if state.home else None)
    st, r = do_clone(url, home, db_url=db, storage_options=_options(option), name=name, store_cls=Store, init=init_store)
    info = {"home": str(st.config.home), "remote": r.to_dict()}
    st.close()
    if as_json:
        emit_json(info)
    else:
        _say(f"store at {info['home']} tracking {r.label}; nothing pulled yet: versions come over on first use")


def repair(ref: Optional[str], remotes: list[str], as_json: bool) -> bool:
    """``verify [REF] --repair REMOTE``: replace missing or corrupt objects with good copies from
    the remotes (in order); prints what it did; returns whether the store is whole afterwards."""
    from deltastore.remotes import repair as do_repair

    rep = do_repair(_store(), remotes or None, ref=ref)
    if as_json:
        emit_json(rep.to_dict())
        return rep.ok
    for x in rep.repaired:
        _say(f"{x.oid}: {x.what}; replaced with the copy from {x.fixed_from}")
    for x in rep.unrepaired:
        err.print(f"{x.oid}: {x.what}; not repaired: {'; '.join(x.notes) or 'no remote has it'}", markup=False, highlight=False)
    for o in rep.others:
        err.print(o, markup=False, highlight=False)
    if rep.ok:
        _say(f"ok: {rep.checked} objects checked, {len(rep.repaired)} repaired")
    return rep.ok


def register(app: typer.Typer) -> None:
    """Add these commands to the ``deltastore`` app."""
    app.add_typer(remote_app, name="remote")
    for fn, name in ((push, "push"), (pull, "pull"), (clone, "clone")):
        command(app, name)(fn)
