"""A delta-come payload, checked and viewed as what the kernels read: tiers of packed factors.

The store writes delta-come payloads in the layout ``codec/quant.py`` documents (b words per 32
values, fp16 scale + zero per group) and ``codec/delta_come.py`` names (``S``, ``v{k}.q/s/z`` rows
of V^T packed along the input dimension n, ``u{k}.q/s/z`` columns of U packed along the output
dimension m). The kernels read those arrays as they are: nothing is re-encoded at load time. This
module only checks a payload once, at load time, so that a truncated, altered or foreign payload
fails there with a clear error instead of giving wrong numbers later.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deltastore.codec import Encoded, checks, quant
from deltastore.codec.errors import CodecError, CorruptPayloadError

from .errors import NotServableError

#: the delta-come payload versions these kernels read (v2 adds rotation, which they refuse)
READS_VERSIONS = (1, 2)
#: Block widths a kernel may use along a packed dimension; one must divide the group size.
_BLOCKS = (128, 64, 32)


def block_for_group(group_size: int) -> int | None:
    """Largest kernel block width (128, 64 or 32) that divides ``group_size``, so one block of a
    packed row lies inside one quantization group; None when none does (not servable lazily)."""
    for b in _BLOCKS:
        if group_size % b == 0:
            return b
    return None


@dataclass
class PackedFactor:
    """One tier's half of a factorization: ``count`` vectors of ``length`` values at ``bits`` bits."""

    bits: int
    count: int
    length: int
    q: torch.Tensor  # int32 (count, bits * ceil(length / 32))
    s: torch.Tensor  # float16 (count, ceil(length / gs))
    z: torch.Tensor  # float16 (count, ceil(length / gs))

    def dequantize(self, group_size: int) -> torch.Tensor:
        """float32 (count, length): the codec's own unpack + dequantize (the reference path)."""
        return quant.dequantize(quant.unpack(self.q, self.bits, self.length), self.s, self.z, group_size)


@dataclass
class PackedDeltaCoMe:
    """A checked delta-come payload for an (m, n) weight: D^ = U^ diag(S) V^^T."""

    shape: tuple[int, int]
    group_size: int
    S: torch.Tensor  # float32 (r,)
    tiers: list[tuple[PackedFactor, PackedFactor]]  # (V^T rows, U columns) per tier, highest bits first

    @property
    def rank(self) -> int:
        return int(self.S.shape[0])

    @property
    def nbytes(self) -> int:
        n = self.S.numel() * 4
        for v, u in self.tiers:
            for f in (v, u):
                n += f.q.numel() * 4 + f.s.numel() * 2 + f.z.numel() * 2
        return n

    def to(self, device: torch.device | str) -> "PackedDeltaCoMe":
        def mv(f: PackedFactor) -> PackedFactor:
            return PackedFactor(f.bits, f.count, f.length, f.q.to(device), f.s.to(device), f.z.to(device))

        return PackedDeltaCoMe(self.shape, self.group_size, self.S.to(device), [(mv(v), mv(u)) for v, u in self.tiers])

    def dense(self) -> torch.Tensor:
        """The float32 delta (m, n), through the codec's reference unpack (for tests and the CPU)."""
        m, n = self.shape
        if not self.tiers:
            return torch.zeros(m, n, device=self.S.device)
        V = torch.cat([v.dequantize(self.group_size) for v, _ in self.tiers])  # (r, n)
        U = torch.cat([u.dequantize(self.group_size) for _, u in self.tiers])  # (r, m)
        return (U.T * self.S) @ V


def _array(enc: Encoded, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    a = enc.arrays.get(name)
    if a is None:
        raise CorruptPayloadError(f"delta-come payload lacks array {name!r}")
    if a.dtype != dtype or tuple(a.shape) != shape:
        raise CorruptPayloadError(
            f"delta-come array {name!r} is {str(a.dtype).removeprefix('torch.')} {tuple(a.shape)}; "
            f"a {enc.shape[0]}x{enc.shape[1]} delta needs {str(dtype).removeprefix('torch.')} {shape}")
    return a


def checked_matrix(enc: Encoded, codec: type, expect_shape: tuple[int, int] | None, what: str) -> tuple[int, int]:
    """(m, n) of a payload that must be ``codec``'s (a Codec class) and check as one by the codec's
    own checks (names, dtypes, shapes, finite values), for an (m, n) base weight where
    ``expect_shape`` is given: the load-time check the lowrank and bitdelta paths share."""
    if enc.codec != codec.codec_id:
        raise NotServableError(f"{what}: codec {enc.codec!r} is not {codec.codec_id}")
    try:
        if not isinstance(checks.check_payload(enc), codec):
            raise CorruptPayloadError(f"{what}: payload names codec {codec.codec_id} but does not check as one")
    except CodecError as e:
        raise CorruptPayloadError(f"{what}: {e}") from None
    m, n = (int(s) for s in enc.shape)
    if expect_shape is not None and (m, n) != tuple(expect_shape):
        raise NotServableError(f"{what}: the delta is {m}x{n} but the base weight is {expect_shape[0]}x{expect_shape[1]}")
    return m, n


def from_encoded(enc: Encoded, expect_shape: tuple[int, int] | None = None, what: str = "delta") -> PackedDeltaCoMe:
    """Check a decoded payload and view it as tiers; raise at once on anything a kernel cannot trust.

    Raises :class:`NotServableError` for a codec (or codec option) with no lazy kernel, and
    :class:`CorruptPayloadError` for arrays of the wrong name, dtype or shape, non-finite values,
    or zero points out of range. ``expect_shape`` is the base weight's shape.
    """
    if enc.codec != "delta-come":
        raise NotServableError(f"{what}: codec {enc.codec!r} has no lazy kernel (delta-come has); load it with lazy=False")
    if enc.version not in READS_VERSIONS:
        raise CorruptPayloadError(f"{what}: delta-come format v{enc.version} is not one these kernels read {READS_VERSIONS}")
    if len(enc.shape) != 2:
        raise CorruptPayloadError(f"{what}: delta-come payload for a {len(enc.shape)}-D tensor; it encodes 2-D weights")
    m, n = (int(s) for s in enc.shape)
    if expect_shape is not None and (m, n) != tuple(expect_shape):
        raise NotServableError(f"{what}: the delta is {m}x{n} but the base weight is {expect_shape[0]}x{expect_shape[1]}")
    meta = enc.meta or {}
    if any(meta.get("rotated") or []):
        raise NotServableError(f"{what}: rotated delta-come payloads have no lazy kernel yet; load with lazy=False")
    try:
        gs = quant.check_group_size(enc.params.get("group_size", quant.DEFAULT_GROUP))
        tiers_meta = [(quant.check_bits(b), int(c)) for b, c in meta["tiers"]]
    except (KeyError, TypeError, ValueError, CodecError) as e:
        raise CorruptPayloadError(f"{what}: delta-come header is malformed ({e})") from None
    if block_for_group(gs) is None:
        raise NotServableError(f"{what}: group size {gs} is not a multiple of 32; the lazy kernels need one; load with lazy=False")
    r = sum(c for _, c in tiers_meta)
    S = _array(enc, "S", (r,), torch.float32)
    if not bool(torch.isfinite(S).all()):
        raise CorruptPayloadError(f"{what}: delta-come singular values are not all finite")
    tiers: list[tuple[PackedFactor, PackedFactor]] = []
    for k, (b, c) in enumerate(tiers_meta):
        if c <= 0:
            raise CorruptPayloadError(f"{what}: delta-come tier {k} has count {c}; stored tiers are non-empty")
        halves = []
        for side, length in (("v", n), ("u", m)):
            g = quant.n_groups(length, gs)
            q = _array(enc, f"{side}{k}.q", (c, quant.packed_words(length, b)), torch.int32)
            s = _array(enc, f"{side}{k}.s", (c, g), torch.float16)
            z = _array(enc, f"{side}{k}.z", (c, g), torch.float16)
            if not bool((torch.isfinite(s) & (s > 0)).all()):
                raise CorruptPayloadError(f"{what}: delta-come {side}{k} scales are not all positive and finite")
            zf = z.to(torch.float32)
            if not bool(((zf >= 0) & (zf <= (1 << b) - 1) & (zf == torch.round(zf))).all()):
                raise CorruptPayloadError(f"{what}: delta-come {side}{k} zero points are not integers in [0, {(1 << b) - 1}]")
            halves.append(PackedFactor(b, c, length, q.contiguous(), s.contiguous(), z.contiguous()))
        tiers.append((halves[0], halves[1]))
    return PackedDeltaCoMe((m, n), gs, S.contiguous(), tiers)
