"""The decode paths' bookkeeping cuts (issue 7): ``from_bytes(copy=False)`` reads a payload's arrays
in place, the plane pools bundle chunks into tasks, and format v3's counts are read with Python
ints. Each gives what the old path gave, byte for byte, and refuses what it refused."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_lossless import finetune_of, weights, with_specials

from deltastore.codec import from_bytes, planes, to_bytes
from deltastore.codec.errors import CorruptPayloadError
from deltastore.codec.lossless import GROUPED_CHUNK_BYTES, Lossless, unpack_counts


def _payload(n: int = 3 * GROUPED_CHUNK_BYTES // 2 + 5) -> tuple[bytes, torch.Tensor, torch.Tensor]:
    base = with_specials(weights(torch.bfloat16, (n,), seed=5))
    target = finetune_of(base, ulps=7)
    return to_bytes(Lossless().encode(target, base)), target, base


def _addr(buf) -> int:  # noqa: ANN001
    return np.frombuffer(buf, dtype=np.uint8).__array_interface__["data"][0]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_no_copy_views_decode_the_same_bits_and_leave_the_payload_alone(kind):
    raw, target, base = _payload()
    buf = kind(raw) if kind is not memoryview else memoryview(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on tensors over read-only memory: not here
        viewed = from_bytes(buf, copy=False)
    copied = from_bytes(raw)
    lo, hi = _addr(buf), _addr(buf) + len(raw)
    at = lo + 8 + int.from_bytes(raw[4:8], "little")  # the arrays follow the header, in its order
    for name, t in viewed.arrays.items():
        assert torch.equal(t, copied.arrays[name]) and t.dtype == copied.arrays[name].dtype
        # a view of the payload where its elements lie aligned (bytes always), else a copy
        assert (t.data_ptr() == at) == (at % t.element_size() == 0)
        assert not lo <= copied.arrays[name].data_ptr() < hi
        at += t.numel() * t.element_size()
    assert lo <= viewed.arrays["stream"].data_ptr() < hi
    out = Lossless().reconstruct(viewed, base)
    assert torch.equal(out.view(torch.int16), target.view(torch.int16))
    assert bytes(buf) == raw  # decoding read the views and wrote nothing
    del buf
    assert to_bytes(viewed) == raw  # the views keep the payload's memory alive


def test_no_copy_copies_a_wide_array_that_lies_unaligned():
    raw, _, base = _payload(4099)
    enc = from_bytes(raw)
    at = 8 + int.from_bytes(raw[4:8], "little") + enc.arrays["stream"].numel()  # counts follow the stream
    pad = 1 if (at + 1) % 4 else 2  # counts one or two bytes off their alignment (a bytearray starts aligned)
    shifted = memoryview(bytearray(b"x" * pad + raw))[pad:]
    viewed = from_bytes(shifted, copy=False)
    lo = _addr(shifted)
    assert (lo + at) % 4
    assert viewed.arrays["counts"].dtype == torch.int32
    assert not lo <= viewed.arrays["counts"].data_ptr() < lo + len(raw)  # copied: int32 one byte off
    assert lo <= viewed.arrays["stream"].data_ptr() < lo + len(raw)  # bytes are viewed wherever they lie
    assert all(torch.equal(viewed.arrays[k], enc.arrays[k]) for k in enc.arrays)


def test_no_copy_refuses_what_copy_refuses():
    raw, _, _ = _payload(4099)
    for bad in (raw[:-1], raw + b"\0", b"XXXX" + raw[4:]):
        for copy in (True, False):
            with pytest.raises(CorruptPayloadError):
                from_bytes(bad, copy=copy)


@pytest.mark.parametrize("threads", [1, 2, 3, 16])
@pytest.mark.parametrize("chunks", [1, 2, 5, 9, 33])
def test_chunk_maps_run_every_chunk_once_in_order(threads, chunks):
    seen = []
    got = planes._map_chunks(lambda i: seen.append(i) or i * i, range(chunks), threads)
    assert got == [i * i for i in range(chunks)] and sorted(seen) == list(range(chunks))


def _unpack_counts_numpy(flat: np.ndarray, info: planes.StreamInfo) -> list[np.ndarray]:
    """The numpy reading of the counts that unpack_counts replaced (its results, not its errors)."""
    out, pos = [], 0
    for raw_len in info.raw_lens:
        present = np.unpackbits(flat[pos : pos + 8].astype("<u4").view(np.uint8), bitorder="little").astype(bool)
        k, pos = int(present.sum()), pos + 8
        c = np.zeros(256, dtype=np.int64)
        c[present] = flat[pos : pos + k]
        pos += k
        out.append(c)
    return out


def test_counts_read_as_python_ints_are_the_numpy_reading():
    raw, _, _ = _payload(5 * GROUPED_CHUNK_BYTES // 2 + 3)
    enc = from_bytes(raw)
    flat, info = enc.arrays["counts"].numpy(), planes.read_info(memoryview(enc.arrays["stream"].numpy()))
    got, want = unpack_counts(flat, info), _unpack_counts_numpy(flat, info)
    assert len(got) == len(want) == len(info.raw_lens) > 1
    assert all(g.dtype == np.int64 and g.shape == (256,) and np.array_equal(g, w) for g, w in zip(got, want))
    top = flat.copy()
    top[7] = np.int32(-(2**31))  # context 255 present (the sign bit of the last word): one count too few
    with pytest.raises(CorruptPayloadError):
        unpack_counts(top, info)


def test_every_codec_decodes_the_same_bits_from_views_and_writes_none_of_them():
    """materialize decodes every codec's payloads through ``copy=False`` views of the object's
    bytes: a codec whose reconstruct wrote into its arrays would change immutable (or read-only
    mapped) memory. Each registered codec: same bits as the copying path, payload unchanged."""
    from deltastore.codec import get_codec, list_codecs

    gen = torch.Generator().manual_seed(0)
    base = (torch.randn(256, 192, generator=gen) * 0.02).to(torch.bfloat16)
    target = (base.float() + torch.randn(256, 192, generator=gen) * 0.002).to(torch.bfloat16)
    for name in list_codecs():
        codec = get_codec(name)
        raw = to_bytes(codec.encode(target, base))
        kept = bytes(bytearray(raw))  # an independent copy to compare with
        a = codec.reconstruct(from_bytes(raw), base)
        b = codec.reconstruct(from_bytes(raw, copy=False), base)
        assert torch.equal(a.view(torch.int16), b.view(torch.int16)), name
        assert raw == kept, name
