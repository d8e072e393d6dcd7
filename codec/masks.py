"""Random masks that decode the same forever: a counter-based hash of (seed, element index).

Why not ``torch.Generator``: a mask drawn from PyTorch's CPU stream (Mersenne Twister) is
defined by whatever that stream gives in the installed torch; if it ever changes, stored dare and
deltadq payloads decode to wrong weights. And a GPU kernel cannot regenerate it (Triton's
``tl.rand`` is another stream). Here every element's random number is a pure function of the
seed and the element's row-major index, written out below, computed with integer ops whose
result is fixed by the definition (no float math, no integer overflow), so this module, a test,
or a Triton kernel working in uint32 all get the same bits.

Definition (all values unsigned; ``M32 = 2**32 - 1``):

* keys: ``z = splitmix64(seed)`` (the 64-bit finalizer of Steele et al.'s SplitMix64 applied to
  ``seed + 0x9E3779B97F4A7C15`` mod 2**64), ``k0 = z & M32``, ``k1 = z >> 32``.
* ``mix32(x)`` is Chris Wellons' ``lowbias32``: ``x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15;
  x *= 0x846CA68B; x ^= x >> 16`` with 32-bit wrapping multiplies.
* ``hash32(seed, i) = mix32(mix32((i & M32) ^ k0) ^ k1 ^ (i >> 32))`` for element index ``i``
  (row-major: ``i = row * n + col``).

Torch has no uint32 arithmetic and signed int64 overflow is not something to build a format on,
so the multiplies split the constant into 16-bit halves and every intermediate stays below
2**49 in int64. A Triton kernel writes the same thing with plain ``uint32`` multiplies.

Masks built on it (format v2 of ``dare`` and ``deltadq``):

* :func:`bernoulli_mask`: element ``i`` is kept iff ``hash32(seed, i) < floor(keep * 2**32)``.
* :func:`balanced_mask`: in each group of consecutive columns of a row, the ``c`` elements of
  smallest ``hash32`` are kept, ties going to the lower column (stable sort order).

:func:`mask_checksum` is stored in the payload and checked on decode, so a regenerated mask that
differs in a single bit is an error, not silently wrong weights.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from .errors import CorruptPayloadError

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
_MUL1 = 0x7FEB352D
_MUL2 = 0x846CA68B
#: Elements hashed per step: bounds the int64 temporaries (a few of 8 B each) to tens of MiB.
CHUNK = 1 << 21


def splitmix64(seed: int) -> int:
    """SplitMix64's first output for state ``seed`` (exact Python integers)."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def seed_keys(seed: int) -> tuple[int, int]:
    """The two 32-bit keys a seed stands for (what a kernel is handed)."""
    z = splitmix64(seed)
    return z & M32, z >> 32


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32): no intermediate reaches 2**49."""
    lo, hi = c & 0xFFFF, c >> 16
    t = x * hi
    t.bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    x = x * lo
    x.add_(t).bitwise_and_(M32)
    return x


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding uint32 values (returns a new tensor)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _MUL1)
    x.bitwise_xor_(x >> 15)
    x = _mul32(x, _MUL2)
    x.bitwise_xor_(x >> 16)
    return x


def hash32(seed: int, index: torch.Tensor) -> torch.Tensor:
    """``hash32(seed, i)`` for an int64 tensor of non-negative indices: int64 values in [0, 2**32)."""
    k0, k1 = seed_keys(seed)
    x = mix32((index & M32) ^ k0)
    x.bitwise_xor_((index >> 32) ^ k1)
    return mix32(x)


def keep_threshold(keep: float) -> int:
    """The integer a hash must stay below to keep an element: floor(keep * 2**32), exact."""
    return min(1 << 32, max(0, int(float(keep) * 4294967296.0)))


def bernoulli_mask(shape: tuple[int, int], keep: float, seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Keep-mask (bool (m, n)): element i kept iff hash32(seed, i) < floor(keep * 2**32)."""
    m, n = shape
    total = m * n
    t = keep_threshold(keep)
    out = torch.empty(total, dtype=torch.bool, device=device)
    for a in range(0, total, CHUNK):
        b = min(total, a + CHUNK)
        idx = torch.arange(a, b, dtype=torch.int64, device=device)
        out[a:b] = hash32(seed, idx) < t
    return out.reshape(m, n)


def _smallest(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k smallest keys along the last dim, ties to the lower position."""
    out = torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
    if k > 0:
        idx = torch.sort(keys, dim=-1, stable=True).indices[..., :k]
        out.scatter_(-1, idx, True)
    return out


def balanced_mask(shape: tuple[int, int], h: int, c: int, seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Balanced keep-mask (bool (m, n)): every full group of ``h`` columns of a row keeps its ``c``
    smallest-hash elements, the short last group (``L = n mod h`` columns) its ``floor(c * L / h)``."""
    m, n = shape
    h = min(h, n)
    gf, L = divmod(n, h) if h > 0 else (0, 0)
    c2 = (c * L) // h if h > 0 else 0
    out = torch.zeros((m, n), dtype=torch.bool, device=device)
    rows = max(1, CHUNK // max(n, 1))
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        idx = torch.arange(r0 * n, r1 * n, dtype=torch.int64, device=device).reshape(r1 - r0, n)
        keys = hash32(seed, idx)
        if gf:
            full = _smallest(keys[:, : gf * h].reshape(r1 - r0, gf, h), c)
            out[r0:r1, : gf * h] = full.reshape(r1 - r0, gf * h)
        if L:
            out[r0:r1, gf * h :] = _smallest(keys[:, gf * h :], c2)
    return out


def mask_checksum(mask: torch.Tensor) -> str:
    """First 16 hex digits of the SHA-256 of the mask's bits, row-major, packed 8 to a byte
    (little bit order): what a payload records and decoding checks."""
    bits = mask.detach().reshape(-1).to(device="cpu", dtype=torch.bool).numpy()
    return hashlib.sha256(np.packbits(bits, bitorder="little").tobytes()).hexdigest()[:16]


def check_checksum(mask: torch.Tensor, recorded: str, codec_id: str, seed: int) -> None:
    """Raise CorruptPayloadError unless the regenerated mask hashes to the checksum the payload
    recorded (dare and deltadq v2): a changed seed, hash or torch can never decode silently."""
    got = mask_checksum(mask)
    if got != recorded:
        raise CorruptPayloadError(
            f"{codec_id} mask checksum mismatch: the mask regenerated from seed {seed} hashes to {got}, "
            f"the payload recorded {recorded}"
        )
