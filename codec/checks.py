"""Checks of untrusted payloads: every fact a decoder reads is checked before it is used.

A payload read from a store (a shared bucket, a copied directory) is input, not a promise. The
reader checks the header's JSON types, that the codec exists and can read this format version,
that the parameters build a codec, and that the arrays are exactly the names, dtypes and shapes
the codec would have written for the header's facts, so a decoder never indexes a missing array,
reshapes a short one, or allocates from a number nobody checked. Anything wrong is a
:class:`CorruptPayloadError` (a :class:`CodecError`) that says what is wrong.

Codecs take part by defining ``check_payload(enc)`` (called on a codec built from the payload's
own parameters); :func:`check_payload` runs it. Decoders call :func:`check_payload` too, so an
:class:`Encoded` built in memory gets the same checks as one read from bytes.

Memory: a decoder allocates its output from the payload's ``shape``. Where the arrays do not pin
that shape down (a payload that kept nothing: rank 0, no kept values), only the caller knows the
shape to expect (the store checks it against the manifest); here the output is capped at
:data:`MAX_DECODE_ELEMENTS` elements.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .base import FLOAT_DTYPES, Codec, Encoded
from .errors import CodecError, CorruptPayloadError
from .registry import codec_class

#: Largest tensor (elements) a payload may decode to: 8 GiB of float32. The biggest lossy target
#: in a 405B model (16384 x 53248) has 0.87e9 elements.
MAX_DECODE_ELEMENTS = 2**31
#: Dtypes a lossy codec's target may have (``reconstruct`` rounds to it): the ones ``Codec.takes``.
LOSSY_DTYPES = tuple(sorted(str(d).removeprefix("torch.") for d in FLOAT_DTYPES))
#: Largest seed a payload may name (the seeds codecs accept).
MAX_SEED = 2**63 - 1

Specs = dict[str, tuple[tuple[int, ...], torch.dtype]]


def corrupt(enc: Encoded, msg: str) -> CorruptPayloadError:
    return CorruptPayloadError(f"{enc.codec} v{enc.version} payload: {msg}")


def get(enc: Encoded, key: str) -> Any:
    """A meta field, or an error naming the missing one."""
    if key not in enc.meta:
        raise corrupt(enc, f"meta lacks {key!r}")
    return enc.meta[key]


def as_int(enc: Encoded, value: Any, what: str, lo: int = 0, hi: int = 2**62) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise corrupt(enc, f"{what} must be an integer in [{lo}, {hi}], got {_short(value)}")
    return value


def as_float(enc: Encoded, value: Any, what: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise corrupt(enc, f"{what} must be a number, got {_short(value)}")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not (math.isfinite(v) and lo <= v <= hi):
        raise corrupt(enc, f"{what} must be a finite number in [{lo}, {hi}], got {_short(value)}")
    return v


def as_bool(enc: Encoded, value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise corrupt(enc, f"{what} must be true or false, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def matrix_shape(enc: Encoded) -> tuple[int, int]:
    """The (m, n) of a lossy payload's target, checked: 2-D, a float dtype, a bounded size."""
    if len(enc.shape) != 2:
        raise corrupt(enc, f"a lossy payload encodes a 2-D matrix, the header says shape {list(enc.shape)}")
    if enc.dtype not in LOSSY_DTYPES:
        raise corrupt(enc, f"a lossy payload's target dtype is one of {LOSSY_DTYPES}, the header says {enc.dtype!r}")
    m, n = enc.shape
    if m * n > MAX_DECODE_ELEMENTS:
        raise corrupt(enc, f"shape {m} x {n} is over the decode limit of {MAX_DECODE_ELEMENTS} elements")
    return m, n


def expect_arrays(enc: Encoded, specs: Specs) -> None:
    """The payload's arrays are exactly ``specs``: the same names, dtypes and shapes."""
    if set(enc.arrays) != set(specs):
        raise corrupt(enc, f"arrays {sorted(enc.arrays)}, expected {sorted(specs)}")
    for name, (shape, dtype) in specs.items():
        a = enc.arrays[name]
        if a.dtype != dtype or tuple(a.shape) != tuple(shape):
            raise corrupt(
                enc,
                f"array {name!r} is {str(a.dtype).removeprefix('torch.')} {list(a.shape)}, "
                f"expected {str(dtype).removeprefix('torch.')} {list(shape)}",
            )


def expect_finite(enc: Encoded, names: list[str] | tuple[str, ...]) -> None:
    """Float arrays (scales, factors) hold finite values: a NaN there is damage, not data."""
    for name in names:
        a = enc.arrays[name]
        if a.numel() and not bool(torch.isfinite(a).all()):
            raise corrupt(enc, f"array {name!r} holds NaN or infinite values")


def payload_codec(enc: Encoded) -> Codec:
    """The codec the payload names, built from the payload's parameters, after checking the
    format version; any failure is a :class:`CodecError`."""
    cls = codec_class(enc.codec)
    if enc.version < 1:
        raise corrupt(enc, f"format version must be at least 1, got {enc.version}")
    if enc.version > cls.version:
        raise CodecError(f"payload is {enc.codec} format v{enc.version}; this deltastore reads up to v{cls.version}: upgrade deltastore")
    try:
        return cls.from_config(enc.params)
    except CodecError as e:
        raise corrupt(enc, f"bad parameters: {e}") from None
    except (TypeError, ValueError, OverflowError, ArithmeticError, AttributeError) as e:
        raise corrupt(enc, f"bad parameters {_short(enc.params)}: {e}") from None


#: Layout checks for codecs whose module does not define ``check_payload`` (yet).
EXTRA_CHECKS: dict[str, Callable[[Codec, Encoded], None]] = {}


def check_payload(enc: Encoded) -> Codec:
    """Check a payload against what its codec would have written; return that codec."""
    codec = payload_codec(enc)
    own = getattr(codec, "check_payload", None)
    if own is not None:
        own(enc)
    elif enc.codec in EXTRA_CHECKS:
        EXTRA_CHECKS[enc.codec](codec, enc)
    return codec


def _check_delta_come(codec: Codec, enc: Encoded) -> None:
    """delta-come's layout (delta_come.py, "Payload"): tiers, S, and six arrays per tier."""
    from . import quant

    m, n = matrix_shape(enc)
    tiers = get(enc, "tiers")
    if not isinstance(tiers, list) or len(tiers) > 64:
        raise corrupt(enc, f"meta 'tiers' must be a list of [bits, count], got {_short(tiers)}")
    parsed: list[tuple[int, int]] = []
    for t in tiers:
        if not isinstance(t, list) or len(t) != 2:
            raise corrupt(enc, f"a tier is [bits, count], got {_short(t)}")
        b = as_int(enc, t[0], "tier bits", 1, 8)
        if b not in quant.PACKABLE_BITS:
            raise corrupt(enc, f"tier bits {b} is not a packable width {quant.PACKABLE_BITS}")
        parsed.append((b, as_int(enc, t[1], "tier count", 1, min(m, n))))
    if sum(c for _, c in parsed) > min(m, n):
        raise corrupt(enc, f"tiers keep {sum(c for _, c in parsed)} components of a rank-{min(m, n)} matrix")
    as_bool(enc, get(enc, "gptq"), "meta 'gptq'")
    rot = enc.meta.get("rotated")
    if rot is not None:
        if enc.version < 2:
            raise corrupt(enc, "meta 'rotated' needs format v2")
        if not isinstance(rot, list) or len(rot) != len(parsed) or not all(isinstance(x, bool) for x in rot):
            raise corrupt(enc, f"meta 'rotated' must be one true/false per tier, got {_short(rot)}")
        if any(rot):
            as_int(enc, get(enc, "rotate_seed"), "meta 'rotate_seed'", 0, MAX_SEED)
    expect_arrays(enc, codec._specs(m, n, parsed))  # type: ignore[attr-defined]
    expect_finite(enc, [k for k in enc.arrays if k == "S" or k.endswith(".s") or k.endswith(".z")])
    # what quant.quant_params writes (scales from fp16's smallest normal up, zero points integers in
    # [0, 2**b - 1]) and what the lazy kernels' loader (kernels/packed.py) already demands: a zero
    # point of 1000 in a 3-bit tier was refused there and decoded here, 56x off
    for k, (b, _) in enumerate(parsed):
        for side in ("v", "u"):
            scale = enc.arrays[f"{side}{k}.s"]
            if not bool((scale > 0).all()):
                raise corrupt(enc, f"delta-come {side}{k} scales are not all positive")
            z = enc.arrays[f"{side}{k}.z"].to(torch.float32)
            if not bool(((z >= 0) & (z <= (1 << b) - 1) & (z == torch.round(z))).all()):
                raise corrupt(enc, f"delta-come {side}{k} zero points are not integers in [0, {(1 << b) - 1}]")


EXTRA_CHECKS["delta-come"] = _check_delta_come
