"""Remotes: other stores this one pushes versions to and pulls them from, as git and DVC users expect.

A remote is another store: an objects URL (a directory or any fsspec URL, e.g. ``s3://bucket/team``)
and, optionally, the URL of its SQL catalog. Without a catalog, the version and tag records beside
its objects are its catalog (what ``db rebuild`` reads), and versions are created there with
conditional writes; with one, they go through that catalog's commit like an add (``transfer.py``).

Remotes are named in ``remotes.toml`` in the store's home, written 0600 like ``config.toml``
(storage options may hold keys)::

    [remotes.origin]
    url = "s3://models/team"
    db_url = "postgresql+psycopg://deltastore@db/team"     # optional
    storage_options = { client_kwargs = { endpoint_url = "http://seaweed:8333" } }

A local directory that is another store's home (it has a ``config.toml``) is opened with that
config, so its own catalog sees what is pushed there. A bucket prefix that a store with a catalog
uses must be added with that catalog (``--db``): records pushed there without it would be strays
to that store's ``gc``. Tags follow the transfer: pushing or pulling a version sets its tags on the
other side where that side has no such tag; a tag the other side has on another version is left
there and named in the result, unless the user asks (``move_tags``, ``--move-tags``: as git's
fetch and push leave an existing tag unless forced). A lazy fetch (below) never moves one: a
checkout is a read.

A remote that cannot be used (unreachable endpoint, credentials refused, no such bucket, a
location holding something that is not a store) is one :class:`~deltastore.errors.RemoteError`
line naming the remote by its safe URL, raised before anything local changes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import tomllib
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import sessionmaker

from . import versions
from .backend import Backend
from .config import CONFIG_NAME, StoreConfig, is_secret_name, load_config, make_home, redact, register_secret, safe_url, write_private
from .errors import (BadInputError, CorruptObjectError, CorruptRecordError, DeltaStoreError, NotFoundError, ObjectMissingError,
                     PullRefusedError, PushRefusedError, RemoteError, TransferRefusedError,
                     UnknownRefError)
from .lookup import Fetcher, resolve_version, set_fetcher_finder, version_info
from .objects import ObjectDB, key_of
from .protocols import Progress, StoreView, no_progress
from .refs import check_name
from .results import VersionInfo
from .transfer import (TRANSFER_WORKERS, RecordsSide, Side, StoreSide, TransferResult, Unreadable, check_object, get_whole,
                       transfer)

REMOTES_NAME = "remotes.toml"
REMOTES_MODE = 0o600
DEFAULT_REMOTE = "origin"


# ----------------------------------------------------------------------------------------------
# naming remotes
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Remote:
    name: str
    url: str  # objects URL
    db_url: str | None = None  # its catalog; None: the records beside its objects
    storage_options: dict = field(default_factory=dict, compare=False)
    #: this store fetches a REF it lacks from here on first use (set by ``clone``; see lazy fetch below)
    lazy: bool = False

    @property
    def label(self) -> str:
        """How messages name it: its name and safe URL (never a password or key)."""
        return f"remote {self.name!r} ({safe_url(self.url)})" if self.name != self.url else f"remote {safe_url(self.url)}"

    @property
    def shown(self) -> str:
        """What a result names it by (a transfer's ``remote``, a repair's source): its name, or, for
        a remote given as a URL (whose name is that URL, password and all), its safe URL. Results
        are printed and written as JSON: the raw name put a key typed into the URL in both."""
        return self.name if self.name != self.url else safe_url(self.url)

    def secrets(self) -> set[str]:
        out: set[str] = set()

        def walk(d: Any) -> None:
            if isinstance(d, dict):
                for k, v in d.items():
                    if isinstance(v, str) and is_secret_name(str(k)):
                        out.add(v)
                    walk(v)

        walk(self.storage_options)
        return out

    def to_dict(self) -> dict[str, Any]:
        """As ``remote ls`` shows it: URLs safe, secret options masked."""
        from .config import redact_data

        opts = {k: ("***" if is_secret_name(k) else v) for k, v in self.storage_options.items()}
        return {"name": self.name, "url": safe_url(self.url), "db_url": safe_url(self.db_url) if self.db_url else None,
                "storage_options": redact_data(opts), "lazy": self.lazy}


def remotes_path(home: str | Path) -> Path:
    return Path(home).expanduser().absolute() / REMOTES_NAME


def load_remotes(home: str | Path) -> dict[str, Remote]:
    p = remotes_path(home)
    if not p.exists():
        return {}
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise BadInputError(f"{p} is not valid TOML: {e}") from None
    out: dict[str, Remote] = {}
    table = data.get("remotes") or {}
    if not isinstance(table, dict):
        raise BadInputError(f"{p}: remotes must be a table of [remotes.NAME] sections")
    for name, d in table.items():
        try:
            check_name(name, "remote name")
        except DeltaStoreError as e:
            raise BadInputError(f"{p}: {e}") from None
        if not isinstance(d, dict) or not isinstance(d.get("url"), str) or not d["url"]:
            raise BadInputError(f"{p}: remote {name!r} needs a url")
        if not isinstance(d.get("db_url", ""), str):
            raise BadInputError(f"{p}: remote {name!r}: db_url must be a string")
        opts = d.get("storage_options") or {}
        if not isinstance(opts, dict):
            raise BadInputError(f"{p}: remote {name!r}: storage_options must be a table")
        lazy = d.get("lazy", False)
        if not isinstance(lazy, bool):
            raise BadInputError(f"{p}: remote {name!r}: lazy must be true or false")
        r = Remote(name, d["url"], d.get("db_url"), opts, lazy)
        register_secret(*r.secrets())
        out[name] = r
    return out


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(x)}" for k, x in v.items()) + "}"
    raise BadInputError(f"a storage option of type {type(v).__name__} cannot be written to {REMOTES_NAME}")


def save_remotes(home: str | Path, remotes: dict[str, Remote]) -> Path:
    """Write ``remotes.toml`` atomically, readable by its owner only."""
    p = remotes_path(home)
    make_home(p.parent)
    lines = ["# deltastore remotes (mode 0600: storage options may hold keys)\n"]
    for r in sorted(remotes.values(), key=lambda r: r.name):
        lines.append(f"\n[remotes.{json.dumps(r.name)}]\nurl = {_toml(r.url)}\n")
        if r.db_url:
            lines.append(f"db_url = {_toml(r.db_url)}\n")
        if r.storage_options:
            lines.append(f"storage_options = {_toml(r.storage_options)}\n")
        if r.lazy:
            lines.append("lazy = true\n")
    return write_private(p, "".join(lines), REMOTES_MODE)


def add_remote(home: str | Path, name: str, url: str, *, db_url: str | None = None,
               storage_options: dict | None = None, replace: bool = False, lazy: bool = False) -> Remote:
    check_name(name, "remote name")
    if not url:
        raise BadInputError("a remote needs a URL")
    if "://" not in url and "::" not in url:
        # a directory, kept absolute: fsspec reads a relative path against the directory a later
        # command runs in, so `push` from elsewhere would write a new store there (and `pull` find
        # it empty)
        url = os.path.abspath(os.path.expanduser(url))
    rs = load_remotes(home)
    if name in rs and not replace:
        raise BadInputError(f"remote {name!r} exists ({safe_url(rs[name].url)}); `remote rm {name}` first")
    r = Remote(name, url, db_url, dict(storage_options or {}), lazy)
    register_secret(*r.secrets())
    rs[name] = r
    save_remotes(home, rs)
    return r


def remove_remote(home: str | Path, name: str) -> Remote:
    rs = load_remotes(home)
    if name not in rs:
        raise NotFoundError(f"no remote named {name!r}" + (f"; remotes: {', '.join(sorted(rs))}" if rs else ""))
    r = rs.pop(name)
    save_remotes(home, rs)
    return r


def _looks_like_url(s: str) -> bool:
    return "://" in s or s.startswith(("/", "./", "../", "~"))


def get_remote(home: str | Path, name: str | Remote | None = None) -> Remote:
    """A named remote; ``None``: ``origin``, or the only one; a URL or path: that store, unnamed."""
    if isinstance(name, Remote):
        return name
    rs = load_remotes(home)
    if name is None:
        if DEFAULT_REMOTE in rs:
            return rs[DEFAULT_REMOTE]
        if len(rs) == 1:
            return next(iter(rs.values()))
        if not rs:
            raise NotFoundError("no remote: add one with `deltastore remote add NAME URL`")
        raise BadInputError(f"several remotes and none named {DEFAULT_REMOTE!r}: name one ({', '.join(sorted(rs))})")
    if name in rs:
        return rs[name]
    if _looks_like_url(name):
        return Remote(name, name)
    raise NotFoundError(f"no remote named {name!r}" + (f"; remotes: {', '.join(sorted(rs))}" if rs else ""))


# ----------------------------------------------------------------------------------------------
# opening a remote: every failure one line, before anything local changes
# ----------------------------------------------------------------------------------------------
_REMOTE_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "urllib3", "requests")


_QUERY = re.compile(r"(\w+://[^\s\"'?]+)\?[^\s\"']*")


def _why(e: BaseException) -> str:
    """An exception's first line, redacted, without the query strings of the URLs it names."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return redact(_QUERY.sub(r"\1", msg))


def remote_failure(remote: Remote, e: BaseException) -> RemoteError:
    """One line for what went wrong talking to a remote (no secret: URLs safe, output redacted)."""
    names = {c.__name__ for c in type(e).__mro__}
    if isinstance(e, PermissionError) or {"NoCredentialsError", "PartialCredentialsError"} & names:
        what = f"access denied: {_why(e)} (check this remote's credentials)"
    elif isinstance(e, ConnectionError) or {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                                             "ConnectionError", "ReadTimeoutError"} & names:
        what = f"cannot reach it: {_why(e)}"
    elif isinstance(e, ImportError):
        what = f"cannot open its URL: {_why(e)}"
    else:
        what = f"{type(e).__name__}: {_why(e)}"
    return RemoteError(f"{remote.label}: {what}")


def _from_remote(e: BaseException) -> bool:
    mod = type(e).__module__ or ""
    return isinstance(e, (ConnectionError, PermissionError, TimeoutError)) or mod.split(".")[0] in _REMOTE_MODULES


@contextmanager
def talking_to(remote: Remote) -> Iterator[None]:
    """Turn a storage library's exception raised while using ``remote`` into a RemoteError line."""
    try:
        yield
    except DeltaStoreError:
        raise
    except Exception as e:
        if _from_remote(e):
            raise remote_failure(remote, e) from None
        raise


def probe(remote: Remote, backend: Backend) -> str:
    """What is at the remote's objects URL: ``"store"``, ``"empty"`` (nothing yet) or ``"foreign"``
    (files that are not a store's). Raises RemoteError for a missing bucket or an unreachable one."""
    if backend.local:
        root = Path(backend.root)
        if not root.exists():
            return "empty"
        if not root.is_dir():
            return "foreign"
        names = set(os.listdir(root))
    else:
        fs = backend.fs
        with talking_to(remote):
            try:
                names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(backend.root, detail=False, refresh=True)}
            except FileNotFoundError:
                bucket = backend.root.split("/", 1)[0]
                if bucket != backend.root and fs.exists(bucket):
                    return "empty"
                raise RemoteError(f"{remote.label}: no bucket named {bucket!r} there") from None
    if names & {"objects", "catalog", "config.toml"}:
        return "store"
    names = {n for n in names if not n.startswith(".")}
    return "foreign" if names else "empty"


@dataclass
class OpenRemote:
    remote: Remote
    side: Side
    state: str  # probe()'s answer
    store: Any = None  # the remote's Store when it has a catalog

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


@contextmanager
def open_remote(remote: Remote, store_cls: Callable[..., Any] | None, *, write: bool, home: Path) -> Iterator[OpenRemote]:
    """The remote as a transfer side, checked first: reachable, our credentials taken, a store
    (or, for a push, an empty place that becomes one). ``store_cls`` opens a catalog remote (the
    local store's own class: this module does not import the store facade); without one, a remote
    is read through the records beside its objects even when it has a catalog (every commit
    writes its record: enough to read from, never to write to)."""
    register_secret(*remote.secrets())
    with talking_to(remote):
        try:
            backend = Backend(remote.url, read_only=not write, storage_options=remote.storage_options or None)
        except (ValueError, ImportError) as e:
            raise remote_failure(remote, e) from None
        state = probe(remote, backend)
    if state == "foreign":
        raise RemoteError(f"{remote.label} holds files that are not a deltastore store (no objects/ or catalog/); "
                          "give an empty prefix or a store's objects URL")
    if state == "empty" and not write and (remote.db_url is None or store_cls is None):
        raise RemoteError(f"{remote.label} is empty: nothing has been pushed there")
    opened = None
    cfg = None
    if store_cls is None:
        if write:
            raise ValueError("writing to a remote needs the store class")
    elif remote.db_url:
        cfg = StoreConfig(home, remote.db_url, remote.url, dict(remote.storage_options))
    elif backend.local and (Path(backend.root) / CONFIG_NAME).is_file():
        # another store's home: its own config names its catalog, which must see what lands there
        # (records alone would be strays to its gc)
        # (with its own URLs: DELTASTORE_DB_URL / DELTASTORE_OBJECTS_URL name *this* store, and
        # applied there made a push land here, "already there", and a pull read this store)
        cfg = load_config(backend.root, env=False)
    if cfg is not None and store_cls is not None:
        with talking_to(remote):
            try:
                st = store_cls(cfg, read_only=not write)
            except DeltaStoreError as e:
                raise RemoteError(f"{remote.label}: {e}") from None  # the store's error names the catalog
            except Exception as e:  # noqa: BLE001 - a driver's error: one line, never the URL's password
                raise RemoteError(f"{remote.label}: its catalog {safe_url(cfg.db_url)}: {_why(e)}") from None
        opened = OpenRemote(remote, StoreSide(st, remote.label), state, st)
    else:
        if write and not backend.capabilities.conditional_put:
            # its records are its catalog: two pushers of one NAME would overwrite each other's
            # version (and Backend.put_if_absent refuses, after every object had been sent)
            raise RemoteError(f"{remote.label}: this storage cannot create a file only if it is absent, which a "
                              "remote without a catalog needs to number versions safely; give it a catalog (--db), "
                              "or use a directory or S3")
        opened = OpenRemote(remote, RecordsSide(backend, remote.label), state)
    try:
        yield opened
    finally:
        opened.close()


# ----------------------------------------------------------------------------------------------
# push, pull
# ----------------------------------------------------------------------------------------------
def _home(store: StoreView) -> Path:
    return Path(store.config.home)


def push(store: StoreView, ref: str | None, remote: str | Remote | None = None, *, all_versions: bool = False,
         tagged: str | None = None, tags: bool = True, progress: Progress | None = None,
         workers: int = TRANSFER_WORKERS, move_tags: bool = False) -> list[TransferResult]:
    """Push the version REF names (with its base chain and tags) to a remote; with
    ``all_versions``, every version, and with ``tagged``, every version tagged so (of REF's model
    if REF is given, else of every model). Of many, each version is pushed or refused
    (:data:`REFUSALS`) on its own: PushRefusedError at the end names the refused."""
    r = get_remote(_home(store), remote)
    local = StoreSide(store, "the local store")
    refs = _which(local, ref, all_versions, tagged)
    with open_remote(r, type(store), write=True, home=_home(store)) as rem, talking_to(r):
        return _each(refs, lambda x: transfer(local, rem.side, x, direction="push", remote=r.shown, tags=tags,
                                              progress=progress or no_progress, workers=workers, move_tags=move_tags),
                     r.label, PushRefusedError, many=all_versions or tagged is not None)


def pull(store: StoreView, ref: str | None, remote: str | Remote | None = None, *, all_versions: bool = False,
         tagged: str | None = None, tags: bool = True, progress: Progress | None = None,
         workers: int = TRANSFER_WORKERS, move_tags: bool = False) -> list[TransferResult]:
    """Pull the version REF names on a remote (with its base chain and tags) into this store, or
    every version there (``all_versions``) or every one tagged ``tagged``, of REF's model if REF
    is given; numbers are this store's own (committed like an add). Of many, each version is
    pulled or refused (:data:`REFUSALS`) on its own: PullRefusedError at the end names the refused."""
    if store.read_only:
        raise BadInputError("this store is open read-only; pull writes to it")
    r = get_remote(_home(store), remote)
    with open_remote(r, type(store), write=False, home=_home(store)) as rem, talking_to(r):
        refs = _which(rem.side, ref, all_versions, tagged)
        local = StoreSide(store, "the local store")
        return _each(refs, lambda x: transfer(rem.side, local, x, direction="pull", remote=r.shown, tags=tags,
                                              progress=progress or no_progress, workers=workers, move_tags=move_tags),
                     r.label, PullRefusedError, many=all_versions or tagged is not None)


def _each(refs: list[str], one: Callable[[str], TransferResult], label: str,
          refused_error: type[TransferRefusedError], *, many: bool) -> list[TransferResult]:
    """``one(ref)`` for each version. Of ``many`` (--all, --tag), each is moved or refused
    (:data:`REFUSALS`) on its own, as git fetch treats refs; then ``refused_error`` names every
    refused one and why, with what moved. One REF asked for by name: its refusal is the error."""
    if not many:
        return [one(x) for x in refs]
    done: list[TransferResult] = []
    refused: list[tuple[str, str]] = []
    for x in refs:
        try:
            done.append(one(x))
        except REFUSALS as e:
            log.info("not %s: %s: %s", refused_error.verb, x, e)
            refused.append((x, " ".join(str(e).split())))
    if refused:
        raise refused_error(label, done, refused)
    return done


#: what refuses one version of a push or pull of many (what its source holds for it: a record or
#: row that fails a check, a base chain too deep or looping, a missing or damaged object), which
#: is reported while the others still move; anything else (the remote unreachable, a store locked
#: or out of space, no version number left) ends the transfer. A refused version is not committed
#: on the other side: its checks run before anything moves, and its objects are referenced only
#: once it commits (any already copied are unreferenced, which gc removes).
REFUSALS = (BadInputError, CorruptObjectError, CorruptRecordError, NotFoundError, RemoteError)


def _which(side: Side, ref: str | None, all_versions: bool, tagged: str | None = None) -> list[str]:
    """The REFs a transfer moves: REF itself; or with ``all_versions`` / ``tagged`` every version
    (tagged so) on ``side``, of REF's model when REF is given."""
    if all_versions and tagged is not None:
        raise BadInputError("give --all or --tag, not both")
    if not all_versions and tagged is None:
        if ref is None:
            raise BadInputError("name a REF to transfer, or give --all or --tag TAG")
        return [ref]
    refs = side.refs() if all_versions else side.tagged(check_name(tagged, "tag name"))
    model = ref.partition("@")[0] if ref is not None else None
    if model is not None:
        refs = [x for x in refs if x.partition("@")[0] == model]
    if not refs and tagged is not None:  # (--all of an empty store has nothing to do; a tag nobody has is a typo)
        raise NotFoundError(f"{side.label} has no version tagged {tagged!r}" + (f" in model {model!r}" if model else ""))
    return refs


def clone(url: str, home: str | Path | None, *, db_url: str | None = None, storage_options: dict | None = None,
          name: str = DEFAULT_REMOTE, store_cls: Callable[..., Any], init: Callable[[Path], Any]) -> tuple[Any, Remote]:
    """A new local store at ``home`` tracking the store at ``url`` as remote ``name``; nothing is
    pulled now: a REF the store lacks is fetched from the remote on first use (lazy fetch, below).
    The remote is checked first, so a bad one leaves no home behind. ``init`` creates the local
    store and ``store_cls`` opens a catalog remote (this module does not import the facade)."""
    from .config import default_home

    home_p = (Path(home).expanduser() if home else default_home()).absolute()
    if (home_p / CONFIG_NAME).exists():
        raise BadInputError(f"{home_p} already holds a store; clone into a new directory")
    check_name(name, "remote name")
    r = Remote(name, url, db_url, dict(storage_options or {}))
    with open_remote(r, store_cls, write=False, home=home_p) as rem:
        b = rem.side.backend
        if b.local and Path(b.root).absolute() == home_p:
            # a new catalog there would be what everyone opening that folder reads: the versions
            # its records hold would vanish from every pull
            raise BadInputError(f"{home_p} is {r.label} itself; clone into a new directory")
    st = init(home_p)
    r = add_remote(home_p, name, url, db_url=db_url, storage_options=storage_options, lazy=True)
    return st, r


# ----------------------------------------------------------------------------------------------
# lazy fetch: a clone pulls a REF it lacks on first use
# ----------------------------------------------------------------------------------------------
# lookup.resolve_version calls the catalog's fetcher when a REF is not there; this module finds it.
# A catalog is known by its engine (all a lookup holds): a store opened with ``track`` names its
# home; otherwise a SQLite catalog's home is the folder of its file, checked against that home's
# config. The home's remotes marked ``lazy`` (``clone`` marks its remote) are asked in turn, the
# default first. A fetch is a pull of that one REF (base chain, verification, all-or-nothing), run
# through the same engine the lookup used, and one at a time per process (two threads of a mount
# asking for one version pull it once).
_homes: "weakref.WeakKeyDictionary[Engine, Path]" = weakref.WeakKeyDictionary()
_fetch_lock = threading.Lock()
log = logging.getLogger("deltastore.remotes")


def track(store: StoreView) -> None:
    """Let lookups in ``store``'s catalog fetch from its lazy remotes whatever the catalog is
    (without this, only a home's own SQLite catalog is recognized from its engine)."""
    _homes[store.Session.kw["bind"]] = Path(store.config.home)


def _home_of(engine: Engine) -> Path | None:
    if engine in _homes:
        return _homes[engine]
    db = engine.url.database if engine.dialect.name == "sqlite" else None
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    home = Path(db).absolute().parent
    if not (home / REMOTES_NAME).is_file():
        return None
    try:
        cfg = load_config(home)
    except DeltaStoreError:
        return None
    other = make_url(cfg.db_url)
    if other.get_backend_name() != "sqlite" or not other.database or Path(other.database).absolute() != Path(db).absolute():
        return None  # this file is not that home's catalog (an explicit --db, an environment URL)
    return home


def find_fetcher(engine: Engine) -> Fetcher | None:
    """The fetcher of the catalog behind ``engine``: None unless its home has a lazy remote."""
    home = _home_of(engine)
    if home is None:
        return None
    try:
        rs = load_remotes(home)
    except DeltaStoreError:
        return None
    lazy = sorted((r for r in rs.values() if r.lazy), key=lambda r: r.name != DEFAULT_REMOTE)
    if not lazy:
        return None
    return lambda ref: fetch(engine, home, lazy, ref)


class _FetchTarget:
    """The local store as a fetch writes to it: the catalog engine the lookup ran on, and the
    objects its config names. A lookup holds no store object, only a session: this is the part of
    a store (``StoreView``) that StoreSide, ``commit_version`` and ``lease`` use. A store opened
    read-only (the mount) still gains the versions it fetches: read-only protects what is there."""

    read_only = False
    workers = 1

    def __init__(self, engine: Engine, home: Path):
        self.config = load_config(home)
        self.Session = sessionmaker(engine, expire_on_commit=False)
        self.backend = Backend(self.config.objects_url, storage_options=self.config.storage_options or None)
        self.objects = ObjectDB(self.backend)

    def resolve(self, ref: str) -> VersionInfo:
        with self.Session() as s:
            return version_info(s, resolve_version(s, ref, fetch=False))

    def tag(self, ref: str, name: str, *, move: bool = True) -> VersionInfo:
        return versions.tag(self, ref, name, move=move)  # type: ignore[arg-type]


def fetch(engine: Engine, home: Path, lazy: list[Remote], ref: str) -> tuple[str, int]:
    """Pull the version REF names (with its base chain, and its tags this store lacks: a read never
    moves a tag the user set here) from the first lazy remote that has it; returns its local (model, number). UnknownRefError when none has it; RemoteError (one
    line, nothing changed here) when one cannot be used."""
    with _fetch_lock:
        dst = StoreSide(_FetchTarget(engine, home), "the local store")  # type: ignore[arg-type]
        missing: list[str] = []
        for r in lazy:
            try:
                with open_remote(r, None, write=False, home=home) as rem, talking_to(r):
                    try:
                        rem.side.resolve(ref)
                    except UnknownRefError as e:
                        missing.append(str(e))
                        continue
                    log.info("%s is not here: pulling it from %s", ref, r.label)
                    res = transfer(rem.side, dst, ref, direction="pull", remote=r.shown)
            except RemoteError as e:
                raise RemoteError(f"{ref} is not in this store and fetching it failed: {e}") from None
            model, _, number = res.dst_ref.rpartition("@v")
            if res.ref != res.dst_ref:
                # numbers are each store's own (a pull commits like an add): say so, since a later
                # REF by number names this store's version, not the remote's
                log.warning("%s from %s is %s in this store", res.ref, r.label, res.dst_ref)
            for t in res.tags_left:
                log.info("tag %s left at %s (%s has it on %s)", t.tag, t.at, r.label, t.source_at)
            return model, int(number)
    raise UnknownRefError(f"{ref} is neither in this store nor on its remotes ({'; '.join(missing)})")


set_fetcher_finder(find_fetcher)


# ----------------------------------------------------------------------------------------------
# repair
# ----------------------------------------------------------------------------------------------
@dataclass
class Repair:
    oid: str
    what: str  # the local problem: "missing" | "corrupt (...)" | other
    fixed_from: str | None  # the remote whose good copy replaced it
    notes: list[str] = field(default_factory=list)  # remotes that could not help, and why

    def to_dict(self) -> dict[str, Any]:
        return {"oid": self.oid, "what": self.what, "fixed_from": self.fixed_from, "notes": self.notes}


@dataclass
class RepairReport:
    checked: int  # objects verify re-hashed
    repairs: list[Repair]
    others: list[str]  # problems no object copy fixes (a catalog that disagrees with a manifest)

    @property
    def repaired(self) -> list[Repair]:
        return [x for x in self.repairs if x.fixed_from]

    @property
    def unrepaired(self) -> list[Repair]:
        return [x for x in self.repairs if not x.fixed_from]

    @property
    def ok(self) -> bool:
        return not self.unrepaired and not self.others

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "repaired": [x.to_dict() for x in self.repaired],
                "unrepaired": [x.to_dict() for x in self.unrepaired], "others": self.others}


def repair(store: Any, remotes: list[str | Remote] | None = None, *, ref: str | None = None,
           progress: Progress | None = None) -> RepairReport:
    """Re-hash every object the catalog (or the version REF names, with its bases) needs; replace each missing or corrupt one with a copy
    from the first remote (in the order given; default: the default remote) whose copy hashes to
    its id. A remote whose copy is corrupt too is named in the report and not used."""
    if store.read_only:
        raise BadInputError("this store is open read-only; repair writes to it")
    home = _home(store)
    rs = [get_remote(home, x) for x in (remotes or [None])]
    rep = store.verify(ref, progress=progress)
    todo: dict[str, Repair] = {}
    others: list[str] = []
    for p in rep.problems:
        if p.oid is None:
            others.append(f"{p.what}; breaks {', '.join(p.versions)}")
        elif p.oid not in todo:
            todo[p.oid] = Repair(p.oid, p.what, None)
    if todo:
        for r in rs:
            left = [x for x in todo.values() if not x.fixed_from]
            if not left:
                break
            try:
                with open_remote(r, type(store), write=False, home=home) as rem, talking_to(r):
                    for x in left:
                        _repair_one(store, rem.side, r, x)
            except RemoteError as e:
                for x in left:
                    x.notes.append(str(e))
    return RepairReport(checked=rep.objects, repairs=list(todo.values()), others=others)


def _repair_one(store: Any, side: Side, r: Remote, x: Repair) -> None:
    key = key_of(x.oid)
    try:
        data = get_whole(side.backend, key)
    except Unreadable as e:
        x.notes.append(f"{r.label}'s copy is not usable ({e}); not used")
        return
    if data is None:
        x.notes.append(f"{r.label} does not have it")
        return
    try:
        check_object(x.oid, data)
    except CorruptObjectError as e:
        x.notes.append(f"{r.label}'s copy is corrupt too ({e.why}); not used")
        return
    try:
        store.objects.verify(x.oid)
        x.fixed_from = "local"  # good again here (repaired meanwhile): leave it be
        return
    except (ObjectMissingError, CorruptObjectError):
        pass
    store.backend.put(key, data)  # atomic: readers see the bad object or the good one
    store.backend.flush()
    store.objects.verify(x.oid)
    x.fixed_from = r.shown
