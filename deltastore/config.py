"""Where a store lives: its home, and the catalog and object URLs its config file names; and the
one helper that keeps the secrets those URLs and the environment carry out of every output.

Resolution, strongest first: explicit arguments, ``DELTASTORE_DB_URL`` / ``DELTASTORE_OBJECTS_URL``,
the home's ``config.toml``, defaults (a SQLite file and an ``objects`` directory in the home).
The home is ``--home`` / ``home=``, else ``DELTASTORE_HOME``, else ``~/.deltastore``.

The config file may also hold a ``[storage_options]`` table (fsspec options for the objects URL,
e.g. ``key``/``secret``/``client_kwargs`` for S3). Since it can hold a catalog password or keys,
it is written 0600, and a home this module creates is 0700.

Secrets: a password in a URL (``scheme://user:PASSWORD@host``, ``?password=``), the values of
secret-named storage options (key, secret, token, password, ...) and of secret-named environment
variables (``AWS_SECRET_ACCESS_KEY``, ``AWS_ACCESS_KEY_ID``, ``PGPASSWORD``, ``*_TOKEN``, ...)
print as ``***`` through :func:`redact`, which the CLI applies to everything it writes, and
:func:`safe_url`, which every message that names a URL uses.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, quote_plus

from .errors import BadInputError, NotFoundError

CONFIG_NAME = "config.toml"
CONFIG_MODE = 0o600
HOME_MODE = 0o700
MASK = "***"


def default_home() -> Path:
    return Path(os.environ.get("DELTASTORE_HOME") or Path.home() / ".deltastore").expanduser()


# ----------------------------------------------------------------------------------------------
# secrets
# ----------------------------------------------------------------------------------------------
#: words that, as a part of an option's or an environment variable's name, make its value a credential
#: (``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``, ``client_secret``, ``accountKey``; not ``TOKENIZERS_PARALLELISM``)
_SECRET_WORDS = {"secret", "token", "password", "passwd", "pass", "key", "credential", "credentials", "sas",
                 "apikey", "accesskey", "secretkey", "accountkey"}
_NAME_PARTS = re.compile(r"[_\-.]+|(?<=[a-z])(?=[A-Z])")
#: ``scheme://user:password@`` in any URL. The password runs to the *last* ``@`` of the URL: one
#: typed unquoted may hold ``/`` or ``@`` (AWS secret keys often hold ``/``), and a pattern that
#: stopped at the first of them printed the rest of it in clear. (A URL whose path holds an ``@``
#: after a ``host:port`` loses that part to the mask too: shown too little, never a secret.)
_URL_USERINFO = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s'\"]*):(?P<pw>[^\s'\"]*)@")
#: ``?password=...`` / ``&secret=...`` query parameters
_URL_QUERY = re.compile(r"(?P<pre>[?&](?:password|passwd|secret|token|key|sslpassword|access_key|secret_key)=)(?P<val>[^&\s'\"]*)", re.I)
#: values shorter than this are not treated as secrets (they would mangle ordinary words)
_MIN_SECRET = 4

_registered: set[str] = set()
_lock = threading.Lock()


def is_secret_name(name: str) -> bool:
    """Whether an option or environment variable named ``name`` holds a credential."""
    low = name.lower()
    return any(w in low for w in ("password", "passwd", "secret")) or \
        any(part.lower() in _SECRET_WORDS for part in _NAME_PARTS.split(name))


def _secrets_in_url(url: str) -> set[str]:
    found = {m.group("pw") for m in _URL_USERINFO.finditer(url)} | {m.group("val") for m in _URL_QUERY.finditer(url)}
    out = set()
    for s in found:
        out.add(s)
        try:
            from urllib.parse import unquote

            out.add(unquote(s))
        except Exception:  # noqa: BLE001 - a malformed escape is still redacted as written
            pass
    return out


def _secrets_in_options(opts: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(opts, dict):
        for k, v in opts.items():
            if isinstance(v, (dict, list)):
                out |= _secrets_in_options(v)
            elif isinstance(v, str) and is_secret_name(str(k)):
                out.add(v)
            elif isinstance(v, str) and "://" in v:
                out |= _secrets_in_url(v)
    elif isinstance(opts, list):
        for v in opts:
            out |= _secrets_in_options(v)
    return out


def _env_secrets() -> set[str]:
    out: set[str] = set()
    for k, v in os.environ.items():
        if is_secret_name(k):
            out.add(v)
        elif "://" in v:
            out |= _secrets_in_url(v)
    return out


def register_secret(*values: str) -> None:
    """Treat these strings as secrets in every later :func:`redact` call (for credentials that
    reach the process some other way than a URL, an option or a secret-named variable)."""
    with _lock:
        _registered.update(v for v in values if _worth_masking(v))


def _worth_masking(v: object) -> bool:
    """Short values, booleans and numbers would mangle ordinary output and are no credentials."""
    return isinstance(v, str) and len(v) >= _MIN_SECRET and v.lower() not in ("true", "false", "none", "null") \
        and not v.replace(".", "").isdigit()


def _forms(s: str) -> set[str]:
    """The ways a secret can appear in text: as is, URL-quoted, JSON-escaped."""
    return {s, quote(s, safe=""), quote_plus(s, safe=""), json.dumps(s)[1:-1]}


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every known secret replaced by ``***``: URL passwords, secret query parameters,
    secret-named environment variables and storage options, and whatever was registered."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m.group('pre')}:{MASK}@", text)
    text = _URL_QUERY.sub(lambda m: f"{m.group('pre')}{MASK}", text)
    pattern = _secrets_pattern(frozenset(extra))
    return pattern.sub(MASK, text) if pattern is not None else text


_cache: tuple[object, "re.Pattern[str] | None"] | None = None


def _secrets_pattern(extra: frozenset[str]) -> "re.Pattern[str] | None":
    """One regex over every form of every known secret; rebuilt only when the environment, the
    registered secrets or ``extra`` change (redact runs on every write the CLI makes)."""
    global _cache
    with _lock:
        registered = frozenset(_registered)
    key = (hash(frozenset(os.environ.items())), registered, extra)
    if _cache is not None and _cache[0] == key:
        return _cache[1]
    secrets = set(registered) | _env_secrets() | set(extra)
    forms = sorted({f for s in secrets if _worth_masking(s) for f in _forms(s)}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(f) for f in forms)) if forms else None
    _cache = (key, pattern)
    return pattern


def redact_data(data: Any) -> Any:
    """A JSON-like value with :func:`redact` applied to every string in it (keys included)."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {redact_data(k): redact_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    return data


def safe_url(url: str) -> str:
    """A catalog or objects URL as it may be shown: the password as ``***`` (SQLAlchemy's own
    ``render_as_string(hide_password=True)`` where the URL is one), secret query parameters and
    any other known secret masked too."""
    if "://" in url:
        try:
            from sqlalchemy.engine import make_url

            url = make_url(url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - not an SQLAlchemy URL (s3://..., a path): the regexes apply
            pass
    return redact(url)


# ----------------------------------------------------------------------------------------------
# the config
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreConfig:
    home: Path
    db_url: str
    objects_url: str
    #: fsspec options for the objects URL (``[storage_options]`` in config.toml)
    storage_options: dict = field(default_factory=dict, compare=False)

    @classmethod
    def defaults(cls, home: Path) -> "StoreConfig":
        return cls(home, f"sqlite:///{home / 'catalog.db'}", str(home))

    def secrets(self) -> set[str]:
        """The credentials this config carries (URL passwords, secret storage options)."""
        return _secrets_in_url(self.db_url) | _secrets_in_url(self.objects_url) | _secrets_in_options(self.storage_options)

    def register_secrets(self) -> "StoreConfig":
        register_secret(*self.secrets())
        return self

    def __repr__(self) -> str:
        return (f"StoreConfig(home={str(self.home)!r}, db_url={safe_url(self.db_url)!r}, "
                f"objects_url={safe_url(self.objects_url)!r}, storage_options={redact_data(self.storage_options)!r})")


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_str(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise BadInputError(f"storage option of type {type(v).__name__} cannot be written to {CONFIG_NAME}")


def make_home(home: Path) -> None:
    """Create the home (0700) if it is missing; an existing directory keeps its mode."""
    if home.is_dir():
        return
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        home.mkdir(mode=HOME_MODE)
    except FileExistsError:
        return
    os.chmod(home, HOME_MODE)  # mkdir's mode is filtered by the umask; say it exactly


def write_config(cfg: StoreConfig) -> Path:
    """Write ``config.toml`` atomically, readable by its owner only (it may hold a password)."""
    make_home(cfg.home)
    p = cfg.home / CONFIG_NAME
    text = (
        "# deltastore store configuration (mode 0600: it may hold a password or keys)\n"
        "# db_url: SQLAlchemy URL of the catalog (sqlite:///path or postgresql+psycopg://...)\n"
        "# objects_url: where objects live: a directory or any fsspec URL (s3://bucket/prefix, ...)\n"
        "# [storage_options]: fsspec options for objects_url (key, secret, client_kwargs, ...)\n"
        f"db_url = {_toml_str(cfg.db_url)}\n"
        f"objects_url = {_toml_str(cfg.objects_url)}\n"
    )
    if cfg.storage_options:
        text += "\n[storage_options]\n" + "".join(f"{_toml_str(str(k))} = {_toml_value(v)}\n" for k, v in cfg.storage_options.items())
    return write_private(p, text)


def write_private(p: Path, text: str, mode: int = CONFIG_MODE) -> Path:
    """Write ``p`` atomically (temp, fsync, rename), readable by its owner only: config and
    remotes files may hold keys, and no reader may see a half-written one."""
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed os.open's mode; never widened it
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, p)
    return p


def _warn_if_readable(path: Path, cfg: StoreConfig) -> None:
    """A config file that holds a password or keys and that others can read (one written before
    deltastore wrote them 0600, or copied): say so, with the fix; never change it behind the user."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077 and cfg.secrets():
        logging.getLogger("deltastore").warning(
            "%s holds a password or keys and is readable by others (mode %o): run `chmod 600 %s`", path, mode, path)


def load_config(home: str | Path | None = None, *, db_url: str | None = None, objects_url: str | None = None, create: bool = False,
                env: bool = True) -> StoreConfig:
    """The store at ``home`` (default: DELTASTORE_HOME or ~/.deltastore): its config.toml, then
    DELTASTORE_DB_URL / DELTASTORE_OBJECTS_URL over it, then ``db_url`` / ``objects_url`` over
    those. ``env=False``: the environment is not read, for another store's home (a remote), which
    those variables, naming this store, must not redirect."""
    home_p = Path(home).expanduser() if home else default_home()
    home_p = home_p.absolute()
    path = home_p / CONFIG_NAME
    cfg = StoreConfig.defaults(home_p)
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise BadInputError(f"{path} is not valid TOML: {e}") from None
        opts = data.get("storage_options", {})
        if not isinstance(opts, dict):
            raise BadInputError(f"{path}: storage_options must be a table")
        urls = data.get("db_url", cfg.db_url), data.get("objects_url", cfg.objects_url)
        if not all(isinstance(u, str) and u for u in urls):
            raise BadInputError(f"{path}: db_url and objects_url must be URLs")
        cfg = StoreConfig(home_p, *urls, opts)
        _warn_if_readable(path, cfg)
    elif create:
        cfg = StoreConfig(home_p, db_url or os.environ.get("DELTASTORE_DB_URL") or cfg.db_url,
                          objects_url or os.environ.get("DELTASTORE_OBJECTS_URL") or cfg.objects_url)
        write_config(cfg)
    elif not (os.environ.get("DELTASTORE_DB_URL") and os.environ.get("DELTASTORE_OBJECTS_URL")) and not (db_url and objects_url):
        raise NotFoundError(f"no deltastore at {home_p}: run `deltastore init --home {home_p}` first (or set DELTASTORE_HOME)")
    environ = os.environ if env else {}
    return StoreConfig(
        home_p,
        db_url or environ.get("DELTASTORE_DB_URL") or cfg.db_url,
        objects_url or environ.get("DELTASTORE_OBJECTS_URL") or cfg.objects_url,
        cfg.storage_options,
    ).register_secrets()
