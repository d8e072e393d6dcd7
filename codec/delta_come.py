"""``delta-come``: mixed-precision quantization of the delta's singular vectors (Delta-CoMe).

Method (CODECS.md): SVD the float32 delta ``D = U diag(S) V^T``; give the vectors of the largest
singular values many bits and the long tail few or none; quantize each kept vector group-wise
(asymmetric, groups of ``group_size`` along the vector, fp16 scale + zero per group), with GPTQ
compensation when the layer's input Hessian is known; decode ``D^ = U^ diag(S) V^^T``.

Bit allocation (:func:`allocate`)
---------------------------------
Budget ``alpha * 16 * m * n`` bits. The schedule is a list of ``[bits, count]`` tiers, highest
bits first; ``count`` null means "as many as fit". The default is the paper's:
``[[8, 2], [3, 32], [2, null]]``. Tiers are filled greedily in order and clipped at rank
``min(m, n)``; components not allocated are dropped. Two ways to price a component:

* ``accounting="paper"``: ``bits * (m + n)``, the paper's count (scales, zero points, S and the
  header are free). 4096 x 4096 at 1/16 -> 2 / 32 / 968 components (fills the budget exactly);
  4096 x 11008 -> 2 / 32 / 1436. The all-in size then exceeds the budget by the metadata
  (about +11% at 2 bits: 32 bits of scale + zero per 128 values, plus S).
* ``accounting="all-in"`` (default): the packed words (rows padded to 32 values), the fp16 scale
  and zero of every group, the fp32 singular value, and the serialized header are all charged,
  so ``Encoded.nbytes * 8 <= alpha * 16 * m * n`` whenever the header fits at all.
  4096 x 4096 at 1/16 -> 2 / 32 / 854; 4096 x 11008 -> 2 / 32 / 1271.

Quantization order
------------------
V first: ``V^T`` (r x n) is a linear layer fed ``x``, so its GPTQ Hessian is the layer input
Hessian ``H = sum x x^T`` (n x n), taken from ``EncodeContext.hessian`` (or built from
``EncodeContext.calib`` as ``X^T X``). Then U (m x r), fed ``z = x V^ diag(S)``, whose Hessian is
``(V^ S)^T H (V^ S)`` (r x r): U absorbs V's error. U's columns are quantized one at a time in
groups along the column (``gptq.gptq_quantize(group_along="rows")``). Without a Hessian both are
rounded to nearest. Each row of ``V^T`` and each column of ``U`` uses its tier's bit width.

SVD
---
``svd="lowrank"`` (default): a seeded
randomized range finder (Gaussian test matrix from a CPU ``torch.Generator(seed)``,
``svd_niter`` power iterations with QR re-orthonormalization, ``r + svd_oversample`` columns),
then an exact SVD of the small projected matrix; it falls back to the full SVD when
``r + svd_oversample >= min(m, n)``. ``svd="full"``: ``torch.linalg.svd`` in float32, exact.

Measured (CPU, float32, synthetic deltas with power-law spectra s_i ~ i^-p, p in {1, 0.5, 0.3},
1024^2 and 2048^2, r = the kept count at alpha = 1/16): with ``svd_oversample=256,
svd_niter=4`` the rank-r reconstruction error is within 0.13% of the optimal (full-SVD) one and
the final delta-come error within 0.1% of the full-SVD encode. With no oversampling
(``torch.svd_lowrank(q=r, niter=2)``, i.e. the q=1024 setting CODECS.md times for r ~ 1000) the
rank-r error is ~2% above optimal and the kept singular values are off by up to ~15% near the
cut (vectors there are essentially arbitrary inside the flat part of the spectrum); the final
delta-come error still moves by only 0.1-0.7%, because 2-bit quantization noise of those
components dominates. On an H100 (benchmarks/results/encode_7b_h100.md) "lowrank" gave the
same error as "full" within 3e-4 and ran 6.4x faster per 4096^2 delta: a 7B-shaped model encodes
in about a minute instead of four, so "lowrank" (with the defaults above) is the default, and
"full" remains for exactness. On this project's 2-core CPU "lowrank" is ~2x faster.

Rotation (``rotate=True``, beyond the papers; not the default)
-------------------------------------------------------------
Before quantization, the vectors of every tier with at most ``rotate_max_bits`` (3) bits are
multiplied by a random orthogonal matrix that keeps quantization groups apart: random signs
(:func:`rotation_signs`, from the CPU generator seeded with the encode seed) followed by a
normalized Sylvester Hadamard matrix per group (a group whose length is not a power of two is
split into power-of-two chunks). Rows of ``V^T`` are rotated along n, columns of ``U`` along m;
GPTQ uses the rotated Hessian ``R S H S R`` for the rotated rows of ``V^T`` (U's objective is
unchanged by a rotation of its rows). Decoding undoes it. Such payloads are format v2 (meta
``rotated``, ``rotate_seed``); unrotated payloads are still written as v1. Measured on two real
SmolLM2 fine-tunes (benchmarks/results/codecs_h100.md): relative error 1-2% lower, task metrics
unchanged within noise, so it stays off.

Payload
-------
arrays: ``S`` float32 (r,); for each non-empty tier ``k`` (in ``meta["tiers"]`` order, bits b,
count c): ``v{k}.q`` int32 (c, b*ceil(n/32)) = packed rows of ``V^T`` (quant.py layout),
``v{k}.s`` / ``v{k}.z`` float16 (c, ceil(n/gs)); ``u{k}.q`` int32 (c, b*ceil(m/32)) = packed
columns of ``U`` (stored transposed, one vector per row), ``u{k}.s`` / ``u{k}.z`` float16
(c, ceil(m/gs)). Component ``i`` of tier ``k`` is component ``offset_k + i`` of S.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from . import quant
from .base import EncodeContext, Encoded
from .errors import CodecError, CorruptPayloadError
from .gptq import damped_inverse_factor, gptq_quantize
from .lossy import LossyCodec, parse_accounting, parse_alpha, parse_seed
from .registry import register_codec

DEFAULT_SCHEDULE: tuple[tuple[int, int | None], ...] = ((8, 2), (3, 32), (2, None))
SVD_MODES = ("full", "lowrank")


def parse_schedule(schedule: Any) -> list[list[int | None]]:
    """Validate a schedule: list of [bits, count] with bits packable and count >= 0 or None."""
    if schedule is None:
        return [list(t) for t in DEFAULT_SCHEDULE]
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise CodecError(f"schedule must be a non-empty list of [bits, count] tiers, e.g. [[8, 2], [3, 32], [2, null]]; got {schedule!r}")
    out: list[list[int | None]] = []
    for tier in schedule:
        if not isinstance(tier, (list, tuple)) or len(tier) != 2:
            raise CodecError(f"each schedule tier is [bits, count]; got {tier!r}")
        bits, count = tier
        quant.check_bits(bits, "schedule bits")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise CodecError(f"schedule count must be a non-negative integer or null ('as many as fit'); got {count!r}")
        out.append([int(bits), None if count is None else int(count)])
    return out


def component_cost(m: int, n: int, bits: int, accounting: str = "paper", group_size: int = quant.DEFAULT_GROUP) -> int:
    """Bits one rank-1 component costs at ``bits`` bits."""
    if accounting == "paper":
        return bits * (m + n)
    return quant.quant_bits_cost(m, bits, group_size) + quant.quant_bits_cost(n, bits, group_size) + 32  # + fp32 S


def allocate(
    m: int,
    n: int,
    alpha: float | str = 1 / 16,
    schedule: Any = None,
    accounting: str = "paper",
    group_size: int = quant.DEFAULT_GROUP,
    reserve_bits: int = 0,
) -> list[tuple[int, int]]:
    """Components per tier for an m x n delta, from shapes only (no SVD): [(bits, count), ...]."""
    a = parse_alpha(alpha)
    tiers = parse_schedule(schedule)
    parse_accounting(accounting)
    budget = math.floor(a * 16 * m * n + 1e-9) - int(reserve_bits)
    left = min(m, n)
    out: list[tuple[int, int]] = []
    for bits, count in tiers:
        cost = component_cost(m, n, int(bits), accounting, group_size)  # type: ignore[arg-type]
        k = left if count is None else min(int(count), left)
        k = max(0, min(k, budget // cost if budget > 0 else 0))
        out.append((int(bits), k))  # type: ignore[arg-type]
        budget -= k * cost
        left -= k
    return out


def randomized_svd(A: torch.Tensor, k: int, oversample: int, niter: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k SVD of A by a seeded randomized range finder: (U (m,k), S (k,), Vh (k,n))."""
    m, n = A.shape
    q = min(k + oversample, m, n)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    omega = torch.randn(n, q, generator=g, dtype=torch.float32).to(A.device)
    Q = torch.linalg.qr(A @ omega).Q
    for _ in range(niter):
        Z = torch.linalg.qr(A.T @ Q).Q
        Q = torch.linalg.qr(A @ Z).Q
    Ub, S, Vh = torch.linalg.svd(Q.T @ A, full_matrices=False)
    return (Q @ Ub)[:, :k], S[:k], Vh[:k]


def _pow2_chunks(length: int, group_size: int) -> list[int]:
    """Chunk sizes (powers of two) covering ``length``: every quantization group on its own, and
    each group's length split into its binary digits (a 128-group is one chunk; a 64-long tail is
    one chunk; 100 -> 64 + 32 + 4). No chunk straddles a group boundary."""
    out: list[int] = []
    for g0 in range(0, length, group_size):
        rest = min(group_size, length - g0)
        while rest:
            p = 1 << (rest.bit_length() - 1)
            out.append(p)
            rest -= p
    return out


_HADAMARD: dict[tuple[int, str], torch.Tensor] = {}


def _hadamard(k: int, device: torch.device) -> torch.Tensor:
    """Normalized Sylvester Hadamard matrix of size k (a power of two): symmetric, and its own inverse."""
    key = (k, str(device))
    if key not in _HADAMARD:
        h = torch.ones((1, 1), dtype=torch.float64)
        while h.shape[0] < k:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        _HADAMARD[key] = (h / math.sqrt(k)).to(device=device, dtype=torch.float32)
    return _HADAMARD[key]


def rotation_signs(length: int, seed: int) -> torch.Tensor:
    """The +-1 signs (float32, CPU) of the random Hadamard rotation of a vector of this length."""
    g = torch.Generator(device="cpu").manual_seed(int(seed) ^ (length * 0x9E3779B1))
    return (torch.randint(0, 2, (length,), generator=g, dtype=torch.int64) * 2 - 1).to(torch.float32)


def _blockwise(x: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Multiply each chunk of the last dimension by its (symmetric) Hadamard matrix."""
    out = torch.empty_like(x)
    i = 0
    while i < len(chunks):  # runs of equal chunks go through one matmul
        j = i
        while j < len(chunks) and chunks[j] == chunks[i]:
            j += 1
        k = chunks[i]
        a = sum(chunks[:i])
        b = a + k * (j - i)
        seg = x[..., a:b].reshape(*x.shape[:-1], j - i, k)
        out[..., a:b] = (seg @ _hadamard(k, x.device)).reshape(*x.shape[:-1], b - a)
        i = j
    return out


def rotate(x: torch.Tensor, signs: torch.Tensor, group_size: int) -> torch.Tensor:
    """x (..., L) -> blockdiag(H) (signs * x) along the last dimension; orthogonal, groups kept apart."""
    return _blockwise(x * signs.to(x.device), _pow2_chunks(x.shape[-1], group_size))


def unrotate(y: torch.Tensor, signs: torch.Tensor, group_size: int) -> torch.Tensor:
    """Inverse of :func:`rotate` (H is symmetric and its own inverse)."""
    return _blockwise(y, _pow2_chunks(y.shape[-1], group_size)) * signs.to(y.device)


@register_codec
class DeltaCoMe(LossyCodec):
    """Mixed-precision SVD quantization of a delta (the default lossy codec)."""

    codec_id = "delta-come"
    needs = frozenset({"hessian"})
    version = 2  # v2 adds optional rotation (meta "rotated", "rotate_seed"); unrotated payloads are written as v1

    def __init__(
        self,
        alpha: float | str = 1 / 16,
        schedule: Any = None,
        group_size: int = quant.DEFAULT_GROUP,
        svd: str = "lowrank",
        svd_oversample: int = 256,
        svd_niter: int = 4,
        accounting: str = "all-in",
        seed: int | None = None,
        rotate: bool = False,
        rotate_max_bits: int = 3,
    ):
        self.alpha = parse_alpha(alpha)
        self.schedule = parse_schedule(schedule)
        self.group_size = quant.check_group_size(group_size)
        if svd not in SVD_MODES:
            raise CodecError(f"svd must be one of {SVD_MODES}, got {svd!r}")
        self.svd = svd
        for name, v in (("svd_oversample", svd_oversample), ("svd_niter", svd_niter)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise CodecError(f"{name} must be a non-negative integer, got {v!r}")
        self.svd_oversample = svd_oversample
        self.svd_niter = svd_niter
        self.accounting = parse_accounting(accounting)
        self.seed = parse_seed(seed)
        if not isinstance(rotate, bool):
            raise CodecError(f"rotate must be true or false, got {rotate!r}")
        self.rotate = rotate
        if isinstance(rotate_max_bits, bool) or not isinstance(rotate_max_bits, int) or not 1 <= rotate_max_bits <= 8:
            raise CodecError(f"rotate_max_bits must be an integer in 1..8, got {rotate_max_bits!r}")
        self.rotate_max_bits = rotate_max_bits

    def warm(self, dtypes: Iterable[torch.dtype]) -> None:
        """The packed factors' unpack-and-dequantize kernel, loaded before a checkout's workers
        start (``Codec.warm``), whatever the dtypes."""
        quant.warm()

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        if not self.rotate:  # configs (and fingerprints) of unrotated codecs stay what they were
            cfg.pop("rotate", None)
            cfg.pop("rotate_max_bits", None)
        return cfg

    # -- allocation ---------------------------------------------------------------------------------
    def _specs(self, m: int, n: int, tiers: list[tuple[int, int]]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        gs = self.group_size
        r = sum(c for _, c in tiers)
        specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {"S": ((r,), torch.float32)}
        for k, (b, c) in enumerate(t for t in tiers if t[1] > 0):
            specs[f"v{k}.q"] = ((c, quant.packed_words(n, b)), torch.int32)
            specs[f"v{k}.s"] = ((c, quant.n_groups(n, gs)), torch.float16)
            specs[f"v{k}.z"] = ((c, quant.n_groups(n, gs)), torch.float16)
            specs[f"u{k}.q"] = ((c, quant.packed_words(m, b)), torch.int32)
            specs[f"u{k}.s"] = ((c, quant.n_groups(m, gs)), torch.float16)
            specs[f"u{k}.z"] = ((c, quant.n_groups(m, gs)), torch.float16)
        return specs

    def _rotated(self, tiers: list[tuple[int, int]]) -> list[bool]:
        return [bool(self.rotate and b <= self.rotate_max_bits) for b, c in tiers if c > 0]

    def _meta(self, tiers: list[tuple[int, int]], gptq: bool, rot_seed: int | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"tiers": [[b, c] for b, c in tiers if c > 0], "gptq": gptq}
        rot = self._rotated(tiers)
        if any(rot):
            meta["rotated"] = rot
            meta["rotate_seed"] = 2**63 - 1 if rot_seed is None else int(rot_seed)
        return meta

    def allocation(self, m: int, n: int, dtype: str = "bfloat16") -> list[tuple[int, int]]:
        """This codec's tiers for an m x n delta (header included when accounting is all-in)."""
        if self.accounting == "paper":
            return allocate(m, n, self.alpha, self.schedule, "paper", self.group_size)
        tiers = allocate(m, n, self.alpha, self.schedule, "all-in", self.group_size)
        for _ in range(3):  # the header's size depends (through digit counts) on the tiers
            head = self._header_bits((m, n), dtype, self._specs(m, n, tiers), self._meta(tiers, True))
            new = allocate(m, n, self.alpha, self.schedule, "all-in", self.group_size, reserve_bits=head + 8 * 16)
            if new == tiers:
                break
            tiers = new
        return tiers

    # -- encode ---------------------------------------------------------------------------------
    @staticmethod
    def _hessian(ctx: EncodeContext | None, n: int, device: torch.device) -> torch.Tensor | None:
        if ctx is None:
            return None
        H = getattr(ctx, "hessian", None)
        if H is None and ctx.calib is not None:
            X = ctx.calib.to(device=device, dtype=torch.float32).reshape(-1, ctx.calib.shape[-1])
            H = X.T @ X
        if H is None:
            return None
        if tuple(H.shape) != (n, n):
            raise CodecError(f"input Hessian has shape {tuple(H.shape)}; a layer with {n} inputs needs ({n}, {n})")
        return H.to(device=device, dtype=torch.float32)

    def _svd(self, D: torch.Tensor, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m, n = D.shape
        if self.svd == "lowrank" and r + self.svd_oversample < min(m, n):
            return randomized_svd(D, r, self.svd_oversample, self.svd_niter, seed)
        U, S, Vh = torch.linalg.svd(D, full_matrices=False)
        return U[:, :r], S[:r], Vh[:r]

    def encode(self, target: torch.Tensor, base: torch.Tensor | None, ctx: EncodeContext | None = None) -> Encoded:
        D = self._float_delta(target, base, ctx)
        m, n = D.shape
        dtype_name = str(target.dtype).removeprefix("torch.")
        tiers = self.allocation(m, n, dtype_name)
        live = [(b, c) for b, c in tiers if c > 0]
        r = sum(c for _, c in live)
        H = self._hessian(ctx, n, D.device)
        gs = self.group_size
        arrays: dict[str, torch.Tensor] = {}
        if r == 0:
            arrays["S"] = torch.zeros(0, dtype=torch.float32)
            return self._finish(target, arrays, self._meta(tiers, H is not None))
        seed = self._seed(ctx)
        U, S, Vh = self._svd(D, r, seed)
        bits_per_comp = torch.cat([torch.full((c,), b, dtype=torch.int64) for b, c in live]).to(D.device)
        arrays["S"] = S.to(torch.float32)
        rot = self._rotated(tiers)
        if any(rot):
            # random Hadamard rotation (within quantization groups) of the low-bit tiers' vectors:
            # V^T's rows along n, U's columns along m; decoding undoes it (QuIP#/QuaRot's observation)
            sm, sn = rotation_signs(m, seed), rotation_signs(n, seed)
            nr = sum(c for (b, c), f in zip(live, rot) if f) if all(rot[rot.index(True):]) else None
            if nr is None:
                raise CodecError("rotate needs the rotated (low-bit) tiers to come after the others")
            r0 = r - nr
            Vh = torch.cat([Vh[:r0], rotate(Vh[r0:], sn, gs)], 0)
            U = torch.cat([U[:, :r0], rotate(U[:, r0:].T, sm, gs).T], 1)
            if H is not None:
                Hr = rotate(rotate(H, sn, gs).T.contiguous(), sn, gs)  # R S H S R: the rotated input's Hessian
        if H is not None:
            if any(rot):
                # rows of V^T are quantized against their own input basis: the unrotated components
                # see H, the rotated ones see Hr; run GPTQ once per basis
                parts = []
                for sl, HH in ((slice(0, r0), H), (slice(r0, r), Hr)):
                    if sl.stop > sl.start:
                        parts.append(gptq_quantize(Vh[sl], HH, bits_per_comp[sl], gs, "cols", factor=damped_inverse_factor(HH)))
                vq = torch.cat([p.q for p in parts]); vs = torch.cat([p.scale for p in parts]); vz = torch.cat([p.zero for p in parts])
                Vd = torch.cat([p.dequant for p in parts])
                Vd = torch.cat([Vd[:r0], unrotate(Vd[r0:], sn, gs)], 0)
            else:
                fac = damped_inverse_factor(H)
                rv = gptq_quantize(Vh, H, bits_per_comp, gs, "cols", factor=fac)
                vq, vs, vz, Vd = rv.q, rv.scale, rv.zero, rv.dequant
            A = Vd.T * S.unsqueeze(0)  # V^ diag(S), n x r
            HU = A.T @ H @ A
            ru = gptq_quantize(U, HU, bits_per_comp, gs, "rows")  # rotation along m leaves U's objective unchanged
            uq, us, uz = ru.q.T, ru.scale, ru.zero
        off = 0
        for k, (b, c) in enumerate(live):
            sl = slice(off, off + c)
            if H is None:
                vq_k, vs_k, vz_k = quant.quantize_rtn(Vh[sl], b, gs)
                uq_k, us_k, uz_k = quant.quantize_rtn(U[:, sl].T, b, gs)
            else:
                vq_k, vs_k, vz_k = vq[sl], vs[sl], vz[sl]
                uq_k, us_k, uz_k = uq[sl], us[sl], uz[sl]
            arrays[f"v{k}.q"] = quant.pack(vq_k, b)
            arrays[f"v{k}.s"] = vs_k.to(torch.float16)
            arrays[f"v{k}.z"] = vz_k.to(torch.float16)
            arrays[f"u{k}.q"] = quant.pack(uq_k, b)
            arrays[f"u{k}.s"] = us_k.to(torch.float16)
            arrays[f"u{k}.z"] = uz_k.to(torch.float16)
            off += c
        enc = self._finish(target, arrays, self._meta(tiers, H is not None, seed))
        if not any(rot):
            enc.version = 1  # unrotated payloads keep the v1 format, readable by older deltastores
        return enc

    # -- decode ---------------------------------------------------------------------------------
    def factors(self, enc: Encoded, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U^ (m, r), S (r,), V^ (n, r)) in float32; D^ = U^ diag(S) V^^T."""
        self._check_version(enc)
        m, n = enc.shape
        gs = int(enc.params.get("group_size", quant.DEFAULT_GROUP))
        try:
            S = enc.arrays["S"].to(device=device, dtype=torch.float32)
            us, vs = [], []
            rot = enc.meta.get("rotated") or [False] * len(enc.meta["tiers"])
            if any(rot):
                seed = int(enc.meta["rotate_seed"])
                sm, sn = rotation_signs(m, seed), rotation_signs(n, seed)
            for k, (b, c) in enumerate(enc.meta["tiers"]):
                a = {x: enc.arrays[f"{x[0]}{k}.{x[1:]}"].to(device) for x in ("vq", "vs", "vz", "uq", "us", "uz")}
                v = quant.unpack_dequantize(a["vq"], b, n, a["vs"], a["vz"], gs)
                u = quant.unpack_dequantize(a["uq"], b, m, a["us"], a["uz"], gs)
                if rot[k]:
                    v, u = unrotate(v, sn, gs), unrotate(u, sm, gs)
                vs.append(v)
                us.append(u)
        except KeyError as e:
            raise CorruptPayloadError(f"delta-come payload lacks {e}") from None
        if not us:
            z = torch.zeros((m, 0), device=device), torch.zeros(0, device=device), torch.zeros((n, 0), device=device)
            return z
        Uh = torch.cat(us, 0).T
        Vhat = torch.cat(vs, 0).T
        if Uh.shape[1] != S.shape[0]:
            raise CorruptPayloadError("delta-come payload: tier counts do not match the number of singular values")
        return Uh, S, Vhat

    def decode_delta(self, enc: Encoded, device: torch.device | str | None = None) -> torch.Tensor:
        Uh, S, Vhat = self.factors(enc, device)
        return (Uh * S.unsqueeze(0)) @ Vhat.T
