"""``dare``: drop each delta element at random, rescale the kept ones, store only the kept values.

Each element is kept with probability ``keep = 1 - p`` and the kept ones are divided by
``keep``, so ``E[D^] = D``. The mask costs no stored bits: it is regenerated from a stored seed.

The mask is defined by the CPU ``torch.Generator`` (Mersenne Twister) as::

    g = torch.Generator("cpu").manual_seed(seed)
    mask = (torch.rand(m * n, generator=g, dtype=torch.float32) < float32(keep)).reshape(m, n)

so decoding (and any kernel) must draw the same stream: a GPU kernel cannot regenerate it
in-kernel (Triton's ``tl.rand`` is Philox, a different stream); it has to be handed the mask or
the scattered dense delta decoded on the CPU, or the codec needs a new version whose mask comes
from a counter-based generator the kernel shares. The stream is what PyTorch's CPU generator
gives today; a payload records the torch version it was written with in ``meta["torch"]``, and
decoding checks the regenerated mask's count against the stored count.

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
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import quant
from .base import EncodeContext, Encoded
from .errors import CodecError, CorruptPayloadError
from .lossy import LossyCodec, parse_alpha, parse_seed
from .registry import register_codec

VALUE_BITS = (*quant.PACKABLE_BITS, 16)


def dare_mask(shape: tuple[int, int], keep: float, seed: int) -> torch.Tensor:
    """The keep-mask (bool, on the CPU) for a payload: see the module docstring."""
    m, n = shape
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    u = torch.rand(m * n, generator=g, dtype=torch.float32)
    return (u < torch.tensor(keep, dtype=torch.float32)).reshape(m, n)


@register_codec
class Dare(LossyCodec):
    """Random drop + rescale with a seeded mask; kept values quantized."""

    codec_id = "dare"
    version = 1

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

    def _meta(self, keep: float, seed: int, count: int) -> dict[str, Any]:
        return {"keep": keep, "seed": seed, "count": count, "torch": torch.__version__.split("+")[0]}

    def _value_bits(self, count: int) -> int:
        if self.bits == 16:
            return 16 * count + 32
        return quant.quant_bits_cost(count, self.bits, self.group_size) + 32

    def keep_probability(self, m: int, n: int, dtype: str = "bfloat16", seed: int = 0) -> float:
        """The largest keep whose payload fits the budget with near certainty (shapes only)."""
        N = m * n
        head = self._header_bits((m, n), dtype, self._specs(N), self._meta(0.123456789012345678, seed, N))
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
        mask = dare_mask((m, n), keep, seed).to(D.device) if keep > 0 else torch.zeros((m, n), dtype=torch.bool, device=D.device)
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
        return self._finish(target, arrays, self._meta(keep, seed, count))

    def kept_values(self, enc: Encoded, device: torch.device | str | None = None) -> torch.Tensor:
        """The decoded kept values (already divided by keep), in row-major mask order."""
        count = int(enc.meta["count"])
        c = enc.arrays["c"].to(device=device, dtype=torch.float32)
        if int(enc.params.get("bits", 2)) == 16:
            return enc.arrays["v"].to(device=device, dtype=torch.float32) * c
        b = int(enc.params["bits"])
        gs = int(enc.params.get("group_size", quant.DEFAULT_GROUP))
        q = quant.unpack(enc.arrays["q"].to(device), b, count)
        return quant.dequantize(q, enc.arrays["s"].to(device), enc.arrays["z"].to(device), gs).reshape(count) * c

    def decode_delta(self, enc: Encoded, device: torch.device | str | None = None) -> torch.Tensor:
        self._check_version(enc)
        m, n = enc.shape
        try:
            keep = float(enc.meta["keep"])
            vals = self.kept_values(enc, device)
            seed = int(enc.meta["seed"])
        except KeyError as e:
            raise CorruptPayloadError(f"dare payload lacks {e}") from None
        out = torch.zeros((m, n), dtype=torch.float32, device=device)
        if keep <= 0:
            return out
        mask = dare_mask((m, n), keep, seed).to(out.device)
        if int(mask.sum()) != vals.numel():
            raise CorruptPayloadError(
                f"dare mask regenerated from seed {seed} keeps {int(mask.sum())} values, the payload has {vals.numel()} "
                f"(written with torch {enc.meta.get('torch')}; this is torch {torch.__version__}): the CPU generator's stream differs"
            )
        out[mask] = vals
        return out
