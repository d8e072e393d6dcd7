"""deltastore: a content-addressed store for model weights.

Base models are stored once, losslessly; fine-tunes as compressed deltas against their base.

    import deltastore
    store = deltastore.open()                      # ~/.deltastore, or DELTASTORE_HOME
    store.add_base("smollm2", "path/to/hf-dir")
    store.add_finetune("math", "path/to/ft", base="smollm2", codec="lossless")
    store.checkout("math@v1", "out/")
    sd = store.state_dict("math@latest", device="cpu")
"""

from __future__ import annotations

from pathlib import Path

from .errors import DeltaStoreError
from .results import CheckoutResult, VersionInfo
from .store import Store, init_store, open_store

__version__ = "0.1.0"


def open(home: str | Path | None = None, **kwargs) -> Store:  # noqa: A001 - the API the docs promise
    """Open the store at ``home`` (default: DELTASTORE_HOME or ~/.deltastore), creating it if absent."""
    return init_store(home, **kwargs)


def init(home: str | Path | None = None, **kwargs) -> Store:
    return init_store(home, **kwargs)


__all__ = ["CheckoutResult", "DeltaStoreError", "Store", "VersionInfo", "init", "open", "open_store"]
