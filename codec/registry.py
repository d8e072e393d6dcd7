"""Codecs by name. Built-ins register on import; others come from the ``deltastore.codecs`` entry
point group, loaded the first time an unknown id is asked for."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from .base import Codec
from .errors import UnknownCodecError

_registry: dict[str, type[Codec]] = {}
_entry_points_loaded = False


def register_codec(cls: type[Codec], codec_id: str | None = None) -> type[Codec]:
    """Register a codec class (usable as a decorator)."""
    _registry[codec_id or cls.codec_id] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group="deltastore.codecs"):
        if ep.name not in _registry:
            register_codec(ep.load(), ep.name)


def codec_class(codec_id: str) -> type[Codec]:
    if codec_id not in _registry:
        _load_entry_points()
    try:
        return _registry[codec_id]
    except KeyError:
        raise UnknownCodecError(codec_id, list(_registry)) from None


def get_codec(config: str | dict[str, Any], **params: Any) -> Codec:
    """A codec instance from an id plus parameters, or from a config dict with an ``id`` key."""
    if isinstance(config, str):
        cfg: dict[str, Any] = {"id": config, **params}
    else:
        cfg = {**config, **params}
    cls = codec_class(cfg.pop("id"))
    return cls.from_config(cfg)


def list_codecs() -> list[str]:
    _load_entry_points()
    return sorted(_registry)
