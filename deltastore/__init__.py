"""deltastore: a content-addressed store for model weights.

Base models are stored once, losslessly; fine-tunes as compressed deltas against their base.

    import deltastore
    store = deltastore.open()                      # ~/.deltastore, or DELTASTORE_HOME
    store.add_base("smollm2", "path/to/hf-dir")
    store.add_finetune("math", "path/to/ft", base="smollm2", codec="lossless")
    store.checkout("math@v1", "out/")
    sd = store.state_dict("math@latest", device="cpu")

The store's modules load on first use, so ``import deltastore.codec`` (pure torch) does not pull
in SQLAlchemy, Alembic or fsspec.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .errors import DeltaStoreError
    from .results import CheckoutResult, VersionInfo
    from .store import Store, open_store

_LAZY = {
    "Store": "store",
    "open_store": "store",
    "init_store": "store",
    "DeltaStoreError": "errors",
    "CheckoutResult": "results",
    "VersionInfo": "results",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'deltastore' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{mod}", __name__), name)


def open(home: str | Path | None = None, **kwargs: Any) -> "Store":  # noqa: A001 - the API the docs promise
    """Open the store at ``home`` (default: DELTASTORE_HOME or ~/.deltastore), creating it if absent."""
    from .store import init_store

    return init_store(home, **kwargs)


def init(home: str | Path | None = None, **kwargs: Any) -> "Store":
    from .store import init_store

    return init_store(home, **kwargs)


__all__ = ["CheckoutResult", "DeltaStoreError", "Store", "VersionInfo", "init", "open", "open_store"]
