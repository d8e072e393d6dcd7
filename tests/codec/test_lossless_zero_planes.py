"""Format v4: v3 with zero planes. A group's plane of all zero bytes (most high planes of a
fine-tune's difference) is written as plane mode 3 with no payload; everything else is v3's
layout. The mode is input like any other field: a zero plane that claims bytes is refused with one
CorruptPayloadError, whichever decoder reads it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_lossless import same_bits, weights

from deltastore.codec import from_bytes, planes, to_bytes
from deltastore.codec.errors import CorruptPayloadError
from deltastore.codec.lossless import GROUPED_CHUNK_BYTES, Lossless, diff_code, exponent_contexts, tensor_u8

FX = planes.fast()
PATHS = [False, True] if FX is not None else [True]  # numpy path on / off


def _small_steps(dtype: torch.dtype, n: int, seed: int = 5, big_every: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, base): every weight moved by at most 2 units in the last place (the difference's
    high byte 0), and every ``big_every``-th by 3000 (a nonzero high byte in the groups it falls in)."""
    base = weights(dtype, (n,), seed=seed)
    ib = base.view({2: torch.int16, 4: torch.int32}[base.element_size()])
    step = torch.randint(-2, 3, ib.shape, generator=torch.Generator().manual_seed(seed + 1)).to(ib.dtype)
    if big_every:
        step[::big_every] = 3000
    return (ib + step).view(dtype), base


def _zero_planes_of(target: torch.Tensor, base: torch.Tensor, info: planes.StreamInfo) -> list[list[bool]]:
    """Per chunk, per (group, plane) in payload order: whether that plane of the difference is all zero."""
    width = target.element_size()
    code = diff_code(tensor_u8(target), tensor_u8(base), width)
    ctx = exponent_contexts(tensor_u8(base), target.dtype)
    out, lo = [], 0
    for raw, groups in zip(info.raw_lens, info.groups):
        n = raw // width
        words = code[lo * width:(lo + n) * width].reshape(n, width)[np.argsort(ctx[lo:lo + n], kind="stable")]
        pos, flags = 0, []
        for g in groups:
            for k in range(width):  # most significant plane first
                flags.append(not words[pos:pos + g.n, width - 1 - k].any())
            pos += g.n
        out.append(flags)
        lo += n
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [5_000, GROUPED_CHUNK_BYTES + 1001])
@pytest.mark.parametrize("big_every", [0, 997])
def test_a_zero_plane_has_mode_3_and_no_bytes_and_nothing_else_changes(dtype, n, big_every, monkeypatch):
    """v4 against v3 (``zero_planes=False``) of the same fine-tune: the same chunks, groups, counts
    and payloads, except that exactly the planes that are all zero have mode 3 and length 0; both
    decode to the exact bits on every path, and the compiled and numpy encoders write the same v4."""
    monkeypatch.setattr(planes, "MIN_GROUP", 256)  # several groups a chunk
    target, base = _small_steps(dtype, n, big_every=big_every)
    v4, v3 = Lossless().encode(target, base), Lossless(zero_planes=False).encode(target, base)
    assert (v4.version, v3.version) == (4, 3) and torch.equal(v4.arrays["counts"], v3.arrays["counts"])
    i4, i3 = (planes.read_info(memoryview(e.arrays["stream"].numpy())) for e in (v4, v3))
    assert [[(g.context, g.n) for g in c] for c in i4.groups] == [[(g.context, g.n) for g in c] for c in i3.groups]
    zero = _zero_planes_of(target, base, i3)
    assert any(any(c) for c in zero) and (big_every == 0 or not all(all(c) for c in zero))
    for m4, m3, l4, l3, z in zip(i4.modes, i3.modes, i4.plane_lens, i3.plane_lens, zero):
        for a, b, la, lb, is_zero in zip(m4, m3, l4, l3, z):
            assert (a == planes.ZERO_MODE) == is_zero  # (every zero plane's frame here is a few bytes)
            assert (la, a) == ((0, planes.ZERO_MODE) if is_zero else (lb, b))
    assert len(to_bytes(v4)) < len(to_bytes(v3))
    for numpy_path in PATHS:
        monkeypatch.setattr(planes, "_FAST", None if numpy_path else FX)
        assert same_bits(Lossless().reconstruct(from_bytes(to_bytes(v4)), base), target)
        assert to_bytes(Lossless().encode(target, base)) == to_bytes(v4)
    monkeypatch.setattr(planes, "_FAST", FX)


def _first_group_fields(stream: np.ndarray, width: int) -> tuple[int, int]:
    """Byte offsets of the first group's plane lengths and its modes in a grouped stream."""
    at = 20 + 10 + 1 + 4  # header, the chunk's <QH, the group's context and elements
    return at, at + 4 * width


def test_a_zero_plane_that_claims_bytes_is_refused(monkeypatch):
    target, base = _small_steps(torch.bfloat16, 5_000)
    enc = Lossless().encode(target, base)
    stream = enc.arrays["stream"].numpy()
    lens_at, modes_at = _first_group_fields(stream, 2)
    assert stream[modes_at] == planes.ZERO_MODE and stream[modes_at + 1] == 1
    # the low plane's frame relabelled a zero plane: it claims its frame's bytes
    bad = stream.copy()
    bad[modes_at + 1] = planes.ZERO_MODE
    # the high plane given the low plane's bytes (both lengths add up to the stream as before)
    bad2 = stream.copy()
    bad2[lens_at:lens_at + 4], bad2[lens_at + 4:lens_at + 8] = stream[lens_at + 4:lens_at + 8], stream[lens_at:lens_at + 4]
    for b in (bad, bad2):
        with pytest.raises(CorruptPayloadError, match="zero plane has a payload"):
            planes.read_info(memoryview(b))
        forged = from_bytes(to_bytes(enc))
        forged.arrays["stream"] = torch.from_numpy(b)
        for numpy_path in PATHS:
            monkeypatch.setattr(planes, "_FAST", None if numpy_path else FX)
            with pytest.raises(CorruptPayloadError):
                Lossless().reconstruct(forged, base)
    monkeypatch.setattr(planes, "_FAST", FX)


def test_a_reader_of_v3_refuses_v4_by_its_version():
    """What a store shared with an older deltastore sees: one error that names the versions."""
    from deltastore.codec.errors import CodecError

    target, base = _small_steps(torch.bfloat16, 2_000)
    enc = Lossless().encode(target, base)
    old = Lossless()
    old.version = 3  # (the class attribute an older release has)
    with pytest.raises(CodecError, match="format v4; this deltastore reads up to v3"):
        old.reconstruct(enc, base)


@pytest.mark.skipif(FX is None, reason="numba does not import here")
def test_the_compiled_encoder_and_decoder_use_the_same_zero_plane_rule():
    """The compiled loops keep their own copies (numba freezes globals): the mode and the payload
    size under which a plane is checked must be planes', or the two paths write different bytes."""
    assert (int(FX.ZERO_MODE), int(FX.ZERO_PROBE)) == (planes.ZERO_MODE, planes.ZERO_PROBE)
