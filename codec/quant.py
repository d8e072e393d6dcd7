"""Group-wise asymmetric uniform quantization and b-bit packing, shared by the lossy codecs.

Quantization
------------
A float tensor ``x`` of shape ``(..., L)`` is quantized along its last dimension in groups of
``group_size`` consecutive values (128 by default). Group ``g`` covers ``x[..., g*gs:(g+1)*gs]``;
the last group is shorter when ``L`` is not a multiple of ``gs`` (there are ``ceil(L/gs)``
groups). Each group has a scale ``s`` and an integer zero point ``z``, both stored as float16:

    q   = clamp(round(x / s) + z, 0, 2**b - 1)        (unsigned b-bit integer)
    x^  = (q - z) * s

The range of every group is widened to include 0 (``lo = min(min x, 0)``, ``hi = max(max x, 0)``),
so zero is exactly representable, ``z = round(-lo / s)`` lies in ``[0, 2**b - 1]`` (exact in fp16
for b <= 8) and padding a group with zeros never changes its parameters. The scale
``(hi - lo) / (2**b - 1)`` is rounded *up* to float16 (and to at least 2**-14, the smallest
normal fp16, so no scale is subnormal); quantization then uses the stored fp16 scale, so encoder
and decoder agree bit for bit and every value inside its group's range is reconstructed within
``s / 2`` of itself. (Round-to-nearest; ties go to even as in ``torch.round``.)

Packed layout (what a kernel reads)
-----------------------------------
``pack(q, b)`` packs unsigned b-bit integers (b in {1, 2, 3, 4, 8}) along the last dimension into
little-endian 32-bit words, stored as ``torch.int32`` (read them as uint32). Each row of ``L``
values is padded with zeros to ``L32 = 32 * ceil(L / 32)`` values, and every run of 32 values
("chunk") occupies exactly ``b`` consecutive words, so a row is ``b * L32 / 32`` words and chunk
``c`` is words ``[b*c, b*c + b)`` of its row. Within a chunk, value ``j`` (0..31):

* b in {1, 2, 4, 8}: ``f = 32 // b`` fields per word; value ``j`` is in word ``j // f`` at bits
  ``[(j % f) * b, (j % f) * b + b)``, i.e. ``(w >> ((j % f) * b)) & (2**b - 1)``.
  (For b = 8 this is plain little-endian bytes; for b = 1 bit ``j`` of the single word.)
* b = 3: split into bit planes 3 = 2 + 1. Words 0 and 1 of the chunk hold the low 2 bits of
  values 0..15 and 16..31 exactly as the 2-bit layout; word 2 holds the high bit of value ``j``
  at bit ``j``. So ``q = ((w[j // 16] >> (2 * (j % 16))) & 3) | (((w[2] >> j) & 1) << 2)``.
  Why: no field straddles a word boundary (a dense 3-bit stream puts values 10 and 21 across
  two words), every extraction is one shift and one mask on an aligned 32-bit load, a chunk is
  three aligned words (12 bytes) that a warp lane can load together, and the same
  "b words per 32 values" rule holds for every b.

Arrays are row-major and contiguous; on disk they are the words' little-endian bytes
(``serialize`` writes raw memory; deltastore runs on little-endian hosts only).
"""

from __future__ import annotations

import math

import torch

from ._compiled import load as _load_kernels
from .errors import CodecError

PACKABLE_BITS = (1, 2, 3, 4, 8)
DEFAULT_GROUP = 128
_FP16_MIN_NORMAL = 2.0**-14


def check_bits(bits: int, what: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or bits not in PACKABLE_BITS:
        raise CodecError(f"{what} must be one of {PACKABLE_BITS} (packable widths), got {bits!r}")
    return int(bits)


#: Largest group a codec accepts (a group of 2**31 values is already one group per tensor).
MAX_GROUP = 2**31


def check_group_size(group_size: int, what: str = "group_size") -> int:
    try:
        g = int(group_size)
        ok = not isinstance(group_size, (bool, str)) and g == group_size and 0 < g <= MAX_GROUP
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise CodecError(f"{what} must be a positive integer up to {MAX_GROUP}, got {group_size!r}")
    return g


def n_groups(length: int, group_size: int) -> int:
    return -(-length // group_size)


def packed_words(length: int, bits: int) -> int:
    """Number of int32 words one row of ``length`` b-bit values packs into."""
    return bits * (-(-length // 32))


# -- quantization ---------------------------------------------------------------------------------


def _maxq(bits: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """2**b - 1 as a float tensor shaped (..., 1) for broadcasting over groups."""
    if isinstance(bits, torch.Tensor):
        b = bits.to(device=like.device, dtype=torch.float32)
        return (torch.pow(2.0, b) - 1).reshape(*b.shape, 1)
    return torch.full((), float(2**int(bits) - 1), device=like.device)


def fp16_ceil(x: torch.Tensor) -> torch.Tensor:
    """Smallest float16 >= x (x >= 0, finite, below fp16 max), returned as float32."""
    h = x.to(torch.float16)
    low = h.to(torch.float32) < x
    # no data-dependent branch: a host sync per call costs more than the extra elementwise ops on a GPU
    bumped = (h.view(torch.int16) + 1).view(torch.float16)
    return torch.where(low, bumped, h).to(torch.float32)


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(..., L) -> (..., G, gs), zero-padded at the end."""
    L = x.shape[-1]
    G = n_groups(L, group_size)
    pad = G * group_size - L
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], G, group_size)


def group_params(x: torch.Tensor, bits: int | torch.Tensor, group_size: int = DEFAULT_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per group of ``x`` (..., L) -> two float32 tensors (..., G).

    ``bits`` is an int, or a tensor of shape ``x.shape[:-1]`` giving each row its own width.
    Both results hold values exactly representable in float16.
    """
    xg = _grouped(x.to(torch.float32), group_size)
    lo = xg.amin(dim=-1).clamp(max=0)
    hi = xg.amax(dim=-1).clamp(min=0)
    maxq = _maxq(bits, x)
    scale = fp16_ceil(((hi - lo) / maxq).clamp(min=_FP16_MIN_NORMAL))
    zero = torch.round(-lo / scale).clamp(min=0)
    zero = torch.minimum(zero, maxq.expand_as(zero))
    return scale, zero


def _expand(p: torch.Tensor, length: int, group_size: int) -> torch.Tensor:
    """Per-group parameters (..., G) -> per-value (..., L). Indexes rather than repeating, so the
    work is O(L) whatever ``group_size`` a payload names; a ``p`` with too few groups is an error."""
    idx = torch.arange(length, device=p.device) // group_size
    if length and p.shape[-1] <= int(idx[-1]):
        raise CodecError(f"{p.shape[-1]} groups of {group_size} cannot cover {length} values")
    return p.index_select(-1, idx)


def quantize_with(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int | torch.Tensor, group_size: int = DEFAULT_GROUP) -> torch.Tensor:
    """Integers (int32, same shape as x) for given group parameters."""
    L = x.shape[-1]
    s = _expand(scale, L, group_size)
    z = _expand(zero, L, group_size)
    maxq = _maxq(bits, x)
    q = torch.round(x.to(torch.float32) / s) + z
    q = torch.minimum(q.clamp(min=0), maxq.expand_as(q))
    return q.to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int = DEFAULT_GROUP) -> torch.Tensor:
    """float32 values ``(q - z) * s`` for integers q (..., L) and parameters (..., G)."""
    L = q.shape[-1]
    s = _expand(scale.to(torch.float32), L, group_size)
    z = _expand(zero.to(torch.float32), L, group_size)
    return (q.to(torch.float32) - z) * s


def quantize_rtn(x: torch.Tensor, bits: int | torch.Tensor, group_size: int = DEFAULT_GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest: (q int32 (..., L), scale fp16 (..., G), zero fp16 (..., G))."""
    scale, zero = group_params(x, bits, group_size)
    q = quantize_with(x, scale, zero, bits, group_size)
    return q, scale.to(torch.float16), zero.to(torch.float16)


# -- packing --------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 holding uint32 values -> int32 with the same bits."""
    return (words - ((words >> 31) & 1) * (1 << 32)).to(torch.int32)


def _pack_fields(q: torch.Tensor, b: int) -> torch.Tensor:
    """(..., C, 32) int64 values < 2**b, b in {1,2,4,8} -> (..., C, b) int64 words (uint32 values)."""
    f = 32 // b
    shifts = torch.arange(f, device=q.device, dtype=torch.int64) * b
    fields = q.reshape(*q.shape[:-1], b, f) << shifts
    return fields.sum(dim=-1)


def _unpack_fields(words: torch.Tensor, b: int) -> torch.Tensor:
    """(..., C, b) int64 words -> (..., C, 32) int64 values."""
    f = 32 // b
    shifts = torch.arange(f, device=words.device, dtype=torch.int64) * b
    vals = (words.unsqueeze(-1) >> shifts) & ((1 << b) - 1)
    return vals.reshape(*words.shape[:-1], 32)


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned b-bit integers (..., L) into int32 words (..., b * ceil(L / 32)).

    See the module docstring for the layout. Values must lie in [0, 2**b).
    """
    b = check_bits(bits)
    L = q.shape[-1]
    C = -(-L // 32)
    q = q.to(torch.int64)
    if int(q.numel()) and (int(q.min()) < 0 or int(q.max()) >= (1 << b)):
        raise CodecError(f"cannot pack values outside [0, {1 << b}) into {b} bits")
    if C * 32 != L:
        q = torch.nn.functional.pad(q, (0, C * 32 - L))
    q = q.reshape(*q.shape[:-1], C, 32)
    if b == 3:
        low = _pack_fields(q & 3, 2)  # (..., C, 2)
        high = _pack_fields(q >> 2, 1)  # (..., C, 1)
        words = torch.cat([low, high], dim=-1)
    else:
        words = _pack_fields(q, b)
    return _to_int32(words.reshape(*q.shape[:-2], C * b)).contiguous()


def unpack(packed: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 words (..., b * ceil(L/32)) -> int64 values (..., L)."""
    b = check_bits(bits)
    C = -(-length // 32)
    if packed.shape[-1] != C * b:
        raise CodecError(f"packed row has {packed.shape[-1]} words; {length} values at {b} bits need {C * b}")
    words = (packed.to(torch.int64) & _MASK32).reshape(*packed.shape[:-1], C, b)
    if b == 3:
        vals = _unpack_fields(words[..., :2], 2) | (_unpack_fields(words[..., 2:], 1) << 2)
    else:
        vals = _unpack_fields(words, b)
    return vals.reshape(*packed.shape[:-1], C * 32)[..., :length]


def unpack_dequantize(packed: torch.Tensor, bits: int, length: int, scale: torch.Tensor, zero: torch.Tensor,
                      group_size: int = DEFAULT_GROUP) -> torch.Tensor:
    """``dequantize(unpack(packed, bits, length), scale, zero, group_size)``: float32 (R, length)
    for packed rows (R, words) and group parameters (R, G), equal bit for bit. On the CPU one
    compiled pass (``codec._quant_numba``) without the composition's tensor-sized temporaries;
    elsewhere, or without numba (DELTASTORE_NUMBA=0), the composition itself."""
    b = check_bits(bits)
    kernel = _compiled() if packed.device.type == "cpu" and packed.dim() == 2 else None
    if kernel is None:
        return dequantize(unpack(packed, b, length), scale, zero, group_size)
    rows, C = packed.shape[0], -(-length // 32)
    if packed.shape[-1] != C * b:
        raise CodecError(f"packed row has {packed.shape[-1]} words; {length} values at {b} bits need {C * b}")
    if group_size < 1 or tuple(scale.shape) != tuple(zero.shape) or scale.dim() != 2 or scale.shape[0] != rows:
        raise CodecError(f"group parameters {tuple(scale.shape)} / {tuple(zero.shape)} do not fit {rows} packed rows")
    if length and scale.shape[-1] <= (length - 1) // group_size:
        raise CodecError(f"{scale.shape[-1]} groups of {group_size} cannot cover {length} values")
    out = torch.empty(rows, length, dtype=torch.float32)
    if rows and length:
        words = packed.contiguous().numpy().view("uint32")
        s = scale.to(torch.float32).contiguous().numpy()
        z = zero.to(torch.float32).contiguous().numpy()
        kernel(words, b, length, s, z, int(group_size), out.numpy())
    return out


def warm() -> None:
    """Load :func:`unpack_dequantize`'s compiled kernel in the calling thread (one call on a tiny
    row: every bit width shares its one signature), before a pool's workers meet its first call
    together (``Codec.warm``)."""
    if _compiled() is not None:
        unpack_dequantize(torch.zeros(1, 2, dtype=torch.int32), 2, 32, torch.ones(1, 1), torch.zeros(1, 1), 32)


_KERNEL: object = False


def _compiled():  # noqa: ANN202
    """``codec._quant_numba.unpack_dequantize``, or None (no numba, or DELTASTORE_NUMBA=0)."""
    global _KERNEL
    if _KERNEL is False:
        mod = _load_kernels("_quant_numba")
        _KERNEL = None if mod is None else mod.unpack_dequantize
    return _KERNEL


def quant_bits_cost(length: int, bits: int, group_size: int = DEFAULT_GROUP) -> int:
    """Stored bits for one quantized row: packed words plus fp16 scale and zero per group."""
    return 32 * packed_words(length, bits) + 32 * n_groups(length, group_size)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_F / ||a||_F in float64 (0 when both are zero)."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    na = float(torch.linalg.vector_norm(a64))
    nd = float(torch.linalg.vector_norm(a64 - b64))
    return nd / na if na > 0 else (0.0 if nd == 0 else math.inf)
