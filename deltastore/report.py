"""What ``show`` prints: per-tensor codec, stored size, bpp, error; linears-only and whole ratios."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from .catalog import ObjectRow
from .codec.lossy import is_linear_weight
from .protocols import StoreView


def version_report(store: StoreView, ref: str) -> dict[str, Any]:
    v = store.resolve(ref)
    man = store.manifest(v.manifest)
    oids = {t.object for _, t in man.tensors() if t.object} | {f.header for f in man.files if f.header} | {f.object for f in man.files if f.object}
    with store.Session() as s:
        sizes = dict(s.execute(select(ObjectRow.oid, ObjectRow.stored_bytes).where(ObjectRow.oid.in_(list(oids)))).all()) if oids else {}
    tensors = []
    lin_logical = lin_stored = 0
    for _, t in man.tensors():
        stored = 0 if t.source == "base" else sizes.get(t.object)
        numel = 1
        for d in t.shape:
            numel *= d
        row = {
            "name": t.name, "dtype": t.dtype, "shape": t.shape, "source": t.source,
            "codec": t.codec if t.source == "delta" else ("lossless" if t.source == "tensor" else "base"),
            "exact": t.exact, "logical": t.nbytes, "stored": stored,
            "bpp": (8.0 * stored / numel) if stored is not None and numel else None,
            "rel_error": getattr(t, "rel_error", None),
        }
        tensors.append(row)
        if is_linear_weight(t.name, t.shape):
            lin_logical += t.nbytes
            lin_stored += stored or 0
    files = [{"path": f.path, "kind": f.kind, "size": f.size, "sha256": f.sha256, "exact": f.exact} for f in man.files]
    return {
        "version": v.to_dict(),
        "files": files,
        "tensors": tensors,
        "ratio_whole": v.logical_bytes / max(v.stored_bytes, 1),
        "ratio_linears": (lin_logical / lin_stored) if lin_stored else None,
        "linears_logical_bytes": lin_logical,
        "linears_stored_bytes": lin_stored,
        "lineage": store.lineage(ref).to_dict(),
    }
