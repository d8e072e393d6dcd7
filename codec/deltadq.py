"""``deltadq``: group-wise dropout with a balanced mask, then separate quantization (DeltaDQ).

1. Group-wise dropout. Each row is split into groups of ``h = min(h_g, n)`` consecutive input
   columns (the last group is shorter, ``L = n mod h``, when ``h`` does not divide ``n``). Every
   full group keeps exactly ``c`` elements, the short group ``floor(c * L / h)``; kept elements
   are rescaled by (group length / kept in that group), as in DARE. The mask is not stored: it
   is regenerated from a stored seed. Format v2 (what encode writes) ranks the elements of each
   group by the counter-based hash of ``masks.py`` (``masks.balanced_mask``)::

       key[i] = hash32(seed, i)                         (i = row * n + col)
       keep the c elements of smallest key in each full group, floor(c * L / h) in the short
       one; equal keys go to the lower column (stable sort order)

   a pure function of seed and index that decodes the same in every torch and on every device,
   and that a GPU kernel can regenerate. The payload records the mask's checksum
   (``meta["mask"]``); decoding checks it, and a mismatch is a :class:`CorruptPayloadError`.

   Format v1 (read, never written) drew the keys from PyTorch's CPU generator::

       g = torch.Generator("cpu").manual_seed(seed)
       r = torch.rand(m, n // h, h, generator=g)          # full groups
       keep the c positions of smallest r in each group  (torch.sort(stable=True) order)
       r2 = torch.rand(m, n % h, generator=g)             # the short group, if any
       keep its floor(c * L / h) smallest

   ``c`` is the largest count whose all-in payload fits ``alpha * 16 * m * n`` bits.

   ``h_g``: the paper picks it from {alpha, 2 alpha, ..., n} by the error of layer 1's
   attention scores Q K^T on calibration text. That search needs a model and lives in the store
   (``deltastore/tuning.py``), not here; this codec takes ``h_g`` as a parameter (default 256, the optimum the paper reports
   for WizardMath-7B at 2x and 4x).

2. Separate quantization. The kept values of each row (rescaled, divided by one float32 factor
   ``c_norm = max |value|``) are quantized to ``bits`` = k bits, round-to-nearest, asymmetric, in
   groups of ``group_size`` consecutive kept values (fp16 scale + zero). The integer range is
   split into ``parts`` = M equal parts: part ``p = q >> (k - log2 M)`` is stored as its own plane
   with ``log2 M`` bits per kept value, and the value within the part, ``q & (2**(k - log2 M) - 1)``,
   with ``k - log2 M`` bits. Part ``p``'s "sparse matrix" is the kept elements whose part plane
   reads ``p``; its offset is ``p * 2**(k - log2 M) * scale``.

   Honest accounting: the paper stores each part as a CSR matrix whose column indices it pays
   for anyway, so splitting into parts looks free there. With a seeded mask there are no stored
   indices, so part membership costs ``log2 M`` bits per kept value and the total is k bits per
   kept value for every M. Reconstruction equals plain k-bit quantization; ``parts`` only
   changes the layout (two planes a kernel can read separately).

Payload: ``part`` int32 (m, packed_words(K, log2 M)) when M > 1; ``low`` int32
(m, packed_words(K, k - log2 M)) when k > log2 M; ``s``, ``z`` float16 (m, ceil(K / group_size));
``c`` float32 (1,). K = kept values per row (the same for every row). meta: ``h``,
``keep_per_group`` (c), ``seed``, ``kept_per_row`` (K), v2 ``mask`` (16 hex digits), v1 ``torch``.
"""

from __future__ import annotations

from typing import Any

import torch

from . import checks, masks, quant
from .base import EncodeContext, Encoded
from .errors import CodecError, CorruptPayloadError
from .lossy import LossyCodec, parse_alpha, parse_seed
from .registry import register_codec

_CHECKSUM_PLACEHOLDER = "0" * 16


def _plane_bits(bits: int, parts: int) -> tuple[int, int]:
    pb = parts.bit_length() - 1
    return pb, bits - pb


def _rescale(shape: tuple[int, int], h: int, c: int, device: torch.device | str | None = None) -> torch.Tensor:
    """float32 (m, n): group length / kept in that group (0 where a group keeps nothing)."""
    m, n = shape
    h = min(h, n)
    gf, L = divmod(n, h)
    scale = torch.zeros((m, n), dtype=torch.float32, device=device)
    if gf and c > 0:
        scale[:, : gf * h] = h / c
    if L and (c * L) // h > 0:
        scale[:, gf * h :] = L / ((c * L) // h)
    return scale


def balanced_mask_v1(shape: tuple[int, int], h: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask bool (m, n), rescale float32 (m, n)) of a v1 payload, on the CPU, from PyTorch's CPU
    generator: read-only, see the module docstring."""
    m, n = shape
    h = min(h, n)
    gf, L = divmod(n, h)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    mask = torch.zeros((m, n), dtype=torch.bool)
    if gf:
        r = torch.rand(m, gf, h, generator=g)
        full = torch.zeros((m, gf, h), dtype=torch.bool)
        if c > 0:
            idx = torch.sort(r, dim=-1, stable=True).indices[..., :c]
            full.scatter_(-1, idx, True)
        mask[:, : gf * h] = full.reshape(m, gf * h)
    if L:
        c2 = (c * L) // h
        r2 = torch.rand(m, L, generator=g)
        part = torch.zeros((m, L), dtype=torch.bool)
        if c2 > 0:
            part.scatter_(-1, torch.sort(r2, dim=-1, stable=True).indices[..., :c2], True)
        mask[:, gf * h :] = part
    return mask, _rescale(shape, h, c)


def balanced_mask(shape: tuple[int, int], h: int, c: int, seed: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask bool (m, n), rescale float32 (m, n)) of a v2 payload; see the module docstring."""
    return masks.balanced_mask(shape, h, c, seed, device=device), _rescale(shape, h, c, device=device)


def kept_per_row(n: int, h: int, c: int) -> int:
    h = min(h, n)
    gf, L = divmod(n, h)
    return gf * c + (c * L) // h


@register_codec
class DeltaDQ(LossyCodec):
    """Balanced group-wise dropout + separate (k-bit, M-part) quantization."""

    codec_id = "deltadq"
    needs = frozenset({"model"})
    version = 2  # v2: counter-based mask + mask checksum; v1 (torch CPU generator) is still read

    def __init__(
        self,
        alpha: float | str = 1 / 16,
        h_g: int = 256,
        bits: int = 4,
        parts: int = 4,
        group_size: int = quant.DEFAULT_GROUP,
        seed: int | None = None,
    ):
        self.alpha = parse_alpha(alpha)
        self.h_g = quant.check_group_size(h_g, "h_g (dropout group size)")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise CodecError(f"deltadq bits must be an integer in 1..8, got {bits!r}")
        self.bits = bits
        if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1 or parts & (parts - 1) or parts > 2**bits:
            raise CodecError(f"parts must be a power of two between 1 and 2**bits = {2**bits}, got {parts!r}")
        pb, lb = _plane_bits(bits, parts)
        for w, what in ((pb, "log2(parts)"), (lb, "bits - log2(parts)")):
            if w and w not in quant.PACKABLE_BITS:
                raise CodecError(f"{what} = {w} is not a packable width {quant.PACKABLE_BITS}; pick bits and parts so both planes are")
        self.parts = parts
        self.group_size = quant.check_group_size(group_size)
        self.seed = parse_seed(seed)

    def _specs(self, m: int, K: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        pb, lb = _plane_bits(self.bits, self.parts)
        G = quant.n_groups(K, self.group_size)
        specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        if pb:
            specs["part"] = ((m, quant.packed_words(K, pb)), torch.int32)
        if lb:
            specs["low"] = ((m, quant.packed_words(K, lb)), torch.int32)
        specs["s"] = ((m, G), torch.float16)
        specs["z"] = ((m, G), torch.float16)
        specs["c"] = ((1,), torch.float32)
        return specs

    def _meta(self, h: int, c: int, seed: int, K: int, checksum: str) -> dict[str, Any]:
        return {"h": h, "keep_per_group": c, "seed": seed, "kept_per_row": K, "mask": checksum}

    @staticmethod
    def _payload_bits(specs: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> int:
        total = 0
        for shape, dt in specs.values():
            k = 1
            for s in shape:
                k *= s
            total += 8 * k * torch.empty((), dtype=dt).element_size()
        return total

    def keep_per_group(self, m: int, n: int, dtype: str = "bfloat16", seed: int = 0) -> int:
        """Largest c (kept per full group of h) whose all-in payload fits the budget."""
        h = min(self.h_g, n)
        budget = self.budget_bits((m, n))
        head = self._header_bits((m, n), dtype, self._specs(m, n), self._meta(h, h, seed, n, _CHECKSUM_PLACEHOLDER))
        for c in range(h, 0, -1):
            if self._payload_bits(self._specs(m, kept_per_row(n, h, c))) + head <= budget:
                return c
        return 0

    def encode(self, target: torch.Tensor, base: torch.Tensor | None, ctx: EncodeContext | None = None) -> Encoded:
        D = self._float_delta(target, base, ctx)
        m, n = D.shape
        seed = self._seed(ctx)
        h = min(self.h_g, n)
        c = self.keep_per_group(m, n, str(target.dtype).removeprefix("torch."), seed)
        K = kept_per_row(n, h, c)
        mask, rescale = balanced_mask((m, n), h, c, seed, device=D.device)
        vals = (D * rescale)[mask].reshape(m, K)
        cn = vals.abs().max() if vals.numel() else torch.tensor(0.0, device=D.device)
        cn = cn if float(cn) > 0 else torch.tensor(1.0, device=D.device)
        q, s, z = quant.quantize_rtn(vals / cn, self.bits, self.group_size)
        pb, lb = _plane_bits(self.bits, self.parts)
        arrays: dict[str, torch.Tensor] = {}
        if pb:
            arrays["part"] = quant.pack(q >> lb, pb)
        if lb:
            arrays["low"] = quant.pack(q & ((1 << lb) - 1), lb)
        arrays.update({"s": s, "z": z, "c": cn.reshape(1).to(torch.float32)})
        return self._finish(target, arrays, self._meta(h, c, seed, K, masks.mask_checksum(mask)))

    # -- decode ---------------------------------------------------------------------------------
    def check_payload(self, enc: Encoded) -> None:
        """Check a payload against what this codec (built from its parameters) writes."""
        m, n = checks.matrix_shape(enc)
        if n < 1:
            raise checks.corrupt(enc, f"a deltadq payload has at least one column, the shape is {list(enc.shape)}")
        h = checks.as_int(enc, checks.get(enc, "h"), "meta 'h'", 1, n)
        if h != min(self.h_g, n):
            raise checks.corrupt(enc, f"meta 'h' is {h}, but h_g = {self.h_g} and n = {n} give {min(self.h_g, n)}")
        c = checks.as_int(enc, checks.get(enc, "keep_per_group"), "meta 'keep_per_group'", 0, h)
        checks.as_int(enc, checks.get(enc, "seed"), "meta 'seed'", 0, checks.MAX_SEED)
        K = checks.as_int(enc, checks.get(enc, "kept_per_row"), "meta 'kept_per_row'", 0, n)
        if K != kept_per_row(n, h, c):
            raise checks.corrupt(enc, f"meta 'kept_per_row' is {K}; n = {n}, h = {h}, c = {c} keep {kept_per_row(n, h, c)}")
        if enc.version >= 2:
            mask_sum = checks.get(enc, "mask")
            if not (isinstance(mask_sum, str) and len(mask_sum) == 16 and all(ch in "0123456789abcdef" for ch in mask_sum)):
                raise checks.corrupt(enc, f"meta 'mask' must be 16 hex digits, got {mask_sum!r}"[:200])
        checks.expect_arrays(enc, self._specs(m, K))
        checks.expect_finite(enc, ("s", "z", "c"))

    def decode_delta(self, enc: Encoded, device: torch.device | str | None = None) -> torch.Tensor:
        codec = checks.check_payload(enc)  # built from the payload's own parameters
        if not isinstance(codec, DeltaDQ):
            raise CodecError(f"payload was written by codec {enc.codec!r}, not {self.codec_id!r}")
        m, n = enc.shape
        h, c, seed, K = (enc.meta[k] for k in ("h", "keep_per_group", "seed", "kept_per_row"))
        pb, lb = _plane_bits(codec.bits, codec.parts)
        q = torch.zeros((m, K), dtype=torch.int64, device=device)
        if pb:
            q |= quant.unpack(enc.arrays["part"].to(device), pb, K) << lb
        if lb:
            q |= quant.unpack(enc.arrays["low"].to(device), lb, K)
        vals = quant.dequantize(q, enc.arrays["s"].to(device), enc.arrays["z"].to(device), codec.group_size)
        vals = vals * enc.arrays["c"].to(device=device, dtype=torch.float32)
        if enc.version == 1:
            mask = balanced_mask_v1((m, n), h, c, seed)[0].to(vals.device)
        else:
            mask = masks.balanced_mask((m, n), h, c, seed, device=vals.device)
        if int(mask.sum()) != m * K:
            raise CorruptPayloadError(f"deltadq mask regenerated from seed {seed} keeps {int(mask.sum())} values, the payload has {m * K}")
        if enc.version >= 2:
            masks.check_checksum(mask, enc.meta["mask"], "deltadq", seed)
        out = torch.zeros((m, n), dtype=torch.float32, device=vals.device)
        out[mask] = vals.reshape(-1)
        return out
