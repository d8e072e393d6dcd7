"""``dare``: drop each delta element at random, rescale the kept ones, store only the kept values.

Each element is kept with probability ``keep = 1 - p`` and the kept ones are divided by
``keep``, so ``E[D^] = D``. The mask costs no stored bits: it is regenerated from a stored seed.

The mask (format v2, what encode writes) comes from the counter-based hash of ``masks.py``::

    mask[i] = hash32(seed, i) < floor(keep * 2**32)        (i = row * n + col)

a pure function of the seed and the index in integer arithmetic, so it decodes the same in every
torch, on every device, and a GPU kernel can regenerate it in-kernel. The payload records the
mask's checksum (``meta["mask"]``, ``masks.mask_checksum``); decoding regenerates the mask and
checks its count and checksum, and a mismatch is a :class:`CorruptPayloadError` naming it.

Format v1 (read, never written): the mask came from PyTorch's CPU generator (Mersenne Twister)::

    g = torch.Generator("cpu").manual_seed(seed)
    mask = (torch.rand(m * n, generator=g, dtype=torch.float32) < float32(keep)).reshape(m, n)

with ``meta["torch"]`` the torch version that wrote it and only the kept count to check it by; it
decodes as it always did, for as long as PyTorch's CPU stream stays what it is.

Value storage (the choice of ``bits``): the kept values, in row-major mask order, divided by
``keep`` and by one float32 factor ``c = max |value|``, are quantized to ``bits`` bits
(round-to-nearest, asymmetric, groups of ``group_size`` consecutive kept values, fp16 scale +
zero; quant.py's packed layout) or, with ``bits=16``, stored as float16. ``keep`` is then the
largest value whose all-in size (values, scales, c, header; with a 6-sigma margin for the
binomial count) fits ``alpha * 16 * m * n`` bits. Expected relative Frobenius error of the drop
alone is ``sqrt((1 - keep) / keep)``; quantization adds roughly ``(step^2/12) / keep`` of the
energy. At alpha = 1/16 (1 bpp): 16-bit values keep 1/16 (error ~3.9), 8-bit ~0.12 (~2.7),
4-bit ~0.23 (~1.8), 2-bit ~0.44 (~1.3 with quantization noise). The default is ``bits=2``,
the lowest error at equal bpp. DARE's error is larger than ||D|| itself at these rates; it
is a baseline, not a recommendation.

Payload: ``bits=16``: ``v`` float16 (count,), ``c`` float32 (1,); otherwise ``q`` int32
(1, packed_words(count, bits)), ``s`` / ``z`` float16 (1, ceil(count / group_size)), ``c`` float32
(1,). meta: ``keep`` (float), ``seed`` (int), ``count`` (int), v2 ``mask`` (16 hex digits),
v1 ``torch`` (str).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import checks, masks, quant
from .base import EncodeContext, Encoded
from .errors import CodecError, CorruptPayloadError
from .lossy import LossyCodec, parse_alpha, parse_seed
from .registry import register_codec

VALUE_BITS = (*quant.PACKABLE_BITS, 16)
#: meta["mask"] of a header-size estimate (the real one has the same length).
_CHECKSUM_PLACEHOLDER = "0" * 16


def dare_mask_v1(shape: tuple[int, int], keep: float, seed: int) -> torch.Tensor:
    """The v1 keep-mask (bool, CPU), from PyTorch's CPU generator: read-only, see the module docstring."""
    m, n = shape
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    u = torch.rand(m * n, generator=g, dtype=torch.float32)
    return (u < torch.tensor(keep, dtype=torch.float32)).reshape(m, n)


def dare_mask(shape: tuple[int, int], keep: float, seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The keep-mask (bool (m, n)) of a v2 payload: ``hash32(seed, i) < floor(keep * 2**32)``."""
    return masks.bernoulli_mask(shape, keep, seed, device=device)


@register_codec
class Dare(LossyCodec):
    """Random drop + rescale with a seeded mask; kept values quantized."""

    codec_id = "dare"
    version = 2  # v2: counter-based mask + mask checksum; v1 (torch CPU generator) is still read

    def __init__(self, alpha: float | str = 1 / 16, bits: int = 2, group_size: int = quant.DEFAULT_GROUP, seed: int | None = None):
        self.alpha = parse_alpha(alpha)
        if isinstance(bits, bool) or bits not in VALUE_BITS:
            raise CodecError(f"dare bits must be one of {VALUE_BITS} (16 = fp16 values), got {bits!r}")
        self.bits = int(bits)
        self.group_size = quant.check_group_size(group_size)
        self.seed = parse_seed(seed)

    def _specs(self, count: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        if self.bits == 16:
            return {"v": ((count,), torch.float16), "c": ((1,), torch.float32)}
        G = quant.n_groups(count, self.group_size)
        return {
            "q": ((1, quant.packed_words(count, self.bits)), torch.int32),
            "s": ((1, G), torch.float16),
            "z": ((1, G), torch.float16),
            "c": ((1,), torch.float32),
        }

    def _meta(self, keep: float, seed: int, count: int, checksum: str) -> dict[str, Any]:
        return {"keep": keep, "seed": seed, "count": count, "mask": checksum}

    def _value_bits(self, count: int) -> int:
        if self.bits == 16:
            return 16 * count + 32
        return quant.quant_bits_cost(count, self.bits, self.group_size) + 32

    def keep_probability(self, m: int, n: int, dtype: str = "bfloat16", seed: int = 0) -> float:
        """The largest keep whose payload fits the budget with near certainty (shapes only)."""
        N = m * n
        head = self._header_bits((m, n), dtype, self._specs(N), self._meta(0.123456789012345678, seed, N, _CHECKSUM_PLACEHOLDER))
        budget = self.budget_bits((m, n)) - head
        per = 16 if self.bits == 16 else self.bits + 32 / self.group_size
        fixed = 32 if self.bits == 16 else 32 + 32 * self.bits + 32  # c, last word's padding, last group
        kmax = (budget - fixed) / per
        if kmax <= 0:
            return 0.0
        kmax = kmax - 6 * math.sqrt(kmax)  # binomial count stays under kmax with ~1e-9 odds
        return float(min(1.0, max(0.0, kmax / N)))

    def encode(self, target: torch.Tensor, base: torch.Tensor | None, ctx: EncodeContext | None = None) -> Encoded:
        D = self._float_delta(target, base, ctx)
        m, n = D.shape
        seed = self._seed(ctx)
        keep = self.keep_probability(m, n, str(target.dtype).removeprefix("torch."), seed)
        budget = self.budget_bits((m, n))
        for _ in range(50):
            enc = self._encode_with(target, D, keep, seed)
            if enc.nbytes * 8 <= budget or keep == 0.0:
                return enc
            keep *= 0.99  # the binomial count came out above the margin: shrink and redraw
        return enc

    def _encode_with(self, target: torch.Tensor, D: torch.Tensor, keep: float, seed: int) -> Encoded:
        m, n = D.shape
        mask = dare_mask((m, n), keep, seed, device=D.device)
        vals = D[mask] / keep if keep > 0 else D.new_zeros(0)
        count = int(vals.numel())
        c = vals.abs().max() if count else torch.tensor(0.0, device=D.device)
        c = c if float(c) > 0 else torch.tensor(1.0, device=D.device)
        x = (vals / c).reshape(1, count)
        arrays: dict[str, torch.Tensor] = {"c": c.reshape(1).to(torch.float32)}
        if self.bits == 16:
            arrays["v"] = x.reshape(count).to(torch.float16)
        else:
            q, s, z = quant.quantize_rtn(x, self.bits, self.group_size)
            arrays.update({"q": quant.pack(q, self.bits), "s": s, "z": z})
        arrays = {k: arrays[k] for k in self._specs(count)}
        return self._finish(target, arrays, self._meta(keep, seed, count, masks.mask_checksum(mask)))

    # -- decode ---------------------------------------------------------------------------------
    def check_payload(self, enc: Encoded) -> None:
        """Check a payload against what this codec (built from its parameters) writes."""
        m, n = checks.matrix_shape(enc)
        keep = checks.as_float(enc, checks.get(enc, "keep"), "meta 'keep'", 0.0, 1.0)
        checks.as_int(enc, checks.get(enc, "seed"), "meta 'seed'", 0, checks.MAX_SEED)  # (the decode regenerates the mask from it)
        count = checks.as_int(enc, checks.get(enc, "count"), "meta 'count'", 0, m * n)
        if keep == 0.0 and count:
            raise checks.corrupt(enc, f"keep is 0 but {count} values are stored")
        if enc.version >= 2:
            mask_sum = checks.get(enc, "mask")
            if not (isinstance(mask_sum, str) and len(mask_sum) == 16 and all(ch in "0123456789abcdef" for ch in mask_sum)):
                raise checks.corrupt(enc, f"meta 'mask' must be 16 hex digits, got {mask_sum!r}"[:200])
        checks.expect_arrays(enc, self._specs(count))
        checks.expect_finite(enc, [k for k in ("v", "s", "z", "c") if k in enc.arrays])

    def kept_values(self, enc: Encoded, device: torch.device | str | None = None) -> torch.Tensor:
        """The decoded kept values (already divided by keep), in row-major mask order."""
        codec = checks.check_payload(enc)
        assert isinstance(codec, Dare)
        return codec._kept_values(enc, device)

    def _kept_values(self, enc: Encoded, device: torch.device | str | None) -> torch.Tensor:
        count = int(enc.meta["count"])
        c = enc.arrays["c"].to(device=device, dtype=torch.float32)
        if self.bits == 16:
            return enc.arrays["v"].to(device=device, dtype=torch.float32) * c
        q = quant.unpack(enc.arrays["q"].to(device), self.bits, count)
        return quant.dequantize(q, enc.arrays["s"].to(device), enc.arrays["z"].to(device), self.group_size).reshape(count) * c

    def decode_delta(self, enc: Encoded, device: torch.device | str | None = None) -> torch.Tensor:
        codec = checks.check_payload(enc)  # built from the payload's own parameters
        if not isinstance(codec, Dare):
            raise CodecError(f"payload was written by codec {enc.codec!r}, not {self.codec_id!r}")
        (m, n), keep, seed, count = enc.shape, float(enc.meta["keep"]), enc.meta["seed"], enc.meta["count"]
        vals = codec._kept_values(enc, device)
        out = torch.zeros((m, n), dtype=torch.float32, device=device)
        if enc.version == 1:
            if keep <= 0:
                return out
            mask = dare_mask_v1((m, n), keep, seed).to(out.device)
        else:
            mask = dare_mask((m, n), keep, seed, device=out.device)
        kept = int(mask.sum())
        if kept != count:
            where = (
                f"written with torch {enc.meta.get('torch')}; this is torch {torch.__version__}: the CPU generator's stream differs"
                if enc.version == 1
                else "the payload's keep, seed or count was altered"
            )
            raise CorruptPayloadError(f"dare mask regenerated from seed {seed} keeps {kept} values, the payload has {count} ({where})")
        if enc.version >= 2:
            masks.check_checksum(mask, enc.meta["mask"], "dare", seed)
        out[mask] = vals
        return out
