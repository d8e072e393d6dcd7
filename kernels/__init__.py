"""Applying encoded deltas without expanding them: Triton kernels, their torch reference twins,
and the ``DeltaLinear`` module built on them (imported as ``deltastore.kernels``).

- ``packed``: a delta-come payload checked once and viewed as packed tiers (the store's layout).
- ``deltaset``: many fine-tunes' packed deltas of linears sharing an input, in flat device buffers
  with tier/tile tables; ``plan_rows`` groups a batch's rows by fine-tune (id -1 = base only).
- ``triton_ops`` / ``ref_ops``: shrink (x -> z = (x V^) S), expand (y += z U^^T), dequant_rows;
  the same signatures, Triton on a GPU (or under TRITON_INTERPRET=1), torch anywhere.
- ``factor_cache``: without a GPU, the dequantized factors (and bitdelta's unpacked signs) kept
  between calls within ``DELTASTORE_CPU_FACTOR_MB``.
- ``mma``: tensor-core kernels (Gluon) that unpack the packed words into each thread's MMA
  fragment: several fine-tunes at 1..32 rows each (a batch of 2+ rows), one fine-tune at 2..32 (``mma.use_mma``);
  GPU only.
- ``dense``: many rows of one fine-tune: the slot's factors dequantized by one launch into a
  per-device scratch, then cuBLAS GEMMs (chosen from ``DELTASTORE_DENSE_MIN_ROWS`` rows).
- ``lut``: a one-row shrink by table lookup (x enters through a table of pair sums; a 2-bit word's
  nibble is its pair's index); off by default (``DELTASTORE_LUT_SHRINK=1``): slower in its first build.
- ``linear``: ``DeltaLinear``, ``DeltaContext`` (per-row ids), ``KernelPreference``.
- ``decode``: packed -> dense delta (GPU materialization).
- ``lowrank``: lowrank (LoRA-shaped) deltas by slot, applied by two GEMMs with a per-row mask.
- ``bitdelta``: bitdelta deltas (sign bits, a scale) by slot, applied from the packed bits by one
  Triton launch a slot (torch reference elsewhere).
- ``slots``: what the lowrank and bitdelta sets share (deltas by slot, checked and moved with the linear).

Layering: kernels -> codec (for the packed format) and torch; never the store.

This folder is also importable as a top-level ``kernels`` wherever the checkout's root is on
``sys.path`` (``python``, ``python -c`` or ``python -m`` started there; pytest from there), and that
name belongs to Hugging Face's ``kernels`` package, which transformers 5.25 and later imports as it
loads: the folder found first would break ``import transformers`` ("cannot import name
'CUDAProperties' from 'kernels'"). So, imported under that name, this file hands the name to the
installed package of that name (found on ``sys.path`` without this folder's parent) and defines
nothing of ours; where none is installed, the import fails as for a missing module.
"""

if __name__ == "kernels":  # see the module docstring: not deltastore.kernels, the checkout's folder
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _here = _os.path.realpath(__file__)
    _root = _os.path.dirname(_os.path.dirname(_here))
    _spec = _machinery.PathFinder.find_spec(
        __name__, [p for p in _sys.path if _os.path.realpath(p or _os.curdir) != _root])
    if _spec is None or _spec.loader is None or _os.path.realpath(_spec.origin or "") == _here:
        raise ModuleNotFoundError(f"No module named {__name__!r}", name=__name__)
    _module = _util.module_from_spec(_spec)
    _sys.modules[__name__] = _module  # what the import statement returns once this file ends
    _spec.loader.exec_module(_module)
else:
    from .bitdelta import BitDeltaSet, BitDeltaSigns, bitdelta_from_encoded
    from .decode import decode_delta, reconstruct, reconstruct_encoded
    from .deltaset import DeltaSet, RowPlan, plan_rows
    from .errors import KernelError, NotServableError
    from .linear import DeltaContext, DeltaGroup, DeltaLinear, KernelPreference, apply_deltas
    from .lowrank import LowRankFactors, LowRankSet, lowrank_from_encoded, served_from_encoded
    from .packed import PackedDeltaCoMe, from_encoded

    __all__ = [
        "BitDeltaSet",
        "BitDeltaSigns",
        "DeltaContext",
        "DeltaGroup",
        "DeltaLinear",
        "DeltaSet",
        "KernelError",
        "KernelPreference",
        "LowRankFactors",
        "LowRankSet",
        "NotServableError",
        "PackedDeltaCoMe",
        "RowPlan",
        "apply_deltas",
        "bitdelta_from_encoded",
        "decode_delta",
        "from_encoded",
        "lowrank_from_encoded",
        "plan_rows",
        "reconstruct",
        "reconstruct_encoded",
        "served_from_encoded",
    ]
