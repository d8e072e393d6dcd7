"""Where a store lives: its home, and the catalog and object URLs its config file names.

Resolution, strongest first: explicit arguments, ``DELTASTORE_DB_URL`` / ``DELTASTORE_OBJECTS_URL``,
the home's ``config.toml``, defaults (a SQLite file and an ``objects`` directory in the home).
The home is ``--home`` / ``home=``, else ``DELTASTORE_HOME``, else ``~/.deltastore``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError, NotFoundError

CONFIG_NAME = "config.toml"


def default_home() -> Path:
    return Path(os.environ.get("DELTASTORE_HOME") or Path.home() / ".deltastore").expanduser()


@dataclass(frozen=True)
class StoreConfig:
    home: Path
    db_url: str
    objects_url: str

    @classmethod
    def defaults(cls, home: Path) -> "StoreConfig":
        return cls(home, f"sqlite:///{home / 'catalog.db'}", str(home))


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(cfg: StoreConfig) -> Path:
    cfg.home.mkdir(parents=True, exist_ok=True)
    p = cfg.home / CONFIG_NAME
    text = (
        "# deltastore store configuration\n"
        "# db_url: SQLAlchemy URL of the catalog (sqlite:///path or postgresql+psycopg://...)\n"
        "# objects_url: where objects live: a directory or any fsspec URL (s3://bucket/prefix, ...)\n"
        f"db_url = {_toml_str(cfg.db_url)}\n"
        f"objects_url = {_toml_str(cfg.objects_url)}\n"
    )
    tmp = p.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)
    return p


def load_config(home: str | Path | None = None, *, db_url: str | None = None, objects_url: str | None = None, create: bool = False) -> StoreConfig:
    home_p = Path(home).expanduser() if home else default_home()
    home_p = home_p.absolute()
    path = home_p / CONFIG_NAME
    cfg = StoreConfig.defaults(home_p)
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise BadInputError(f"{path} is not valid TOML: {e}") from None
        cfg = StoreConfig(home_p, data.get("db_url", cfg.db_url), data.get("objects_url", cfg.objects_url))
    elif create:
        cfg = StoreConfig(home_p, db_url or os.environ.get("DELTASTORE_DB_URL") or cfg.db_url,
                          objects_url or os.environ.get("DELTASTORE_OBJECTS_URL") or cfg.objects_url)
        write_config(cfg)
    elif not (os.environ.get("DELTASTORE_DB_URL") and os.environ.get("DELTASTORE_OBJECTS_URL")) and not (db_url and objects_url):
        raise NotFoundError(f"no deltastore at {home_p}: run `deltastore init --home {home_p}` first (or set DELTASTORE_HOME)")
    return StoreConfig(
        home_p,
        db_url or os.environ.get("DELTASTORE_DB_URL") or cfg.db_url,
        objects_url or os.environ.get("DELTASTORE_OBJECTS_URL") or cfg.objects_url,
    )
