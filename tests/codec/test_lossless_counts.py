"""Format v3: v2's grouped stream plus each chunk's context counts, so the decoder of 2-byte words
skips the base's histogram. The stream is v2's byte for byte; the counts are input like any other
payload field: counts that do not fit, do not add up, or are not the base's are refused with one
CorruptPayloadError, on the compiled and the numpy path alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_lossless import FLOATS, finetune_of, same_bits, weights, with_specials

from deltastore.codec import from_bytes, planes, to_bytes
from deltastore.codec.errors import CorruptPayloadError
from deltastore.codec.lossless import GROUPED_CHUNK_BYTES, Lossless, pack_counts, unpack_counts

FX = planes.fast()
PATHS = [False, True] if FX is not None else [True]  # numpy path on / off


def _pair(dtype=torch.bfloat16, n=40_000, seed=3):
    base = with_specials(weights(dtype, (n,), seed=seed))
    return finetune_of(base, ulps=9), base


def _decode(enc, base, numpy_path, monkeypatch):
    monkeypatch.setattr(planes, "_FAST", None if numpy_path else FX)
    try:
        return Lossless().reconstruct(from_bytes(to_bytes(enc)), base)
    finally:
        monkeypatch.setattr(planes, "_FAST", FX)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [0, 1, 7, 4099, GROUPED_CHUNK_BYTES + 3])
def test_v3_is_v2s_stream_plus_counts_and_decodes_exactly(dtype, n, monkeypatch):
    target, base = _pair(dtype, n)
    v3, v2 = Lossless(zero_planes=False).encode(target, base), Lossless(context_counts=False).encode(target, base)
    assert (v3.version, v2.version) == (3, 2) and set(v3.arrays) == {"stream", "counts"} and set(v2.arrays) == {"stream"}
    assert torch.equal(v3.arrays["stream"], v2.arrays["stream"])
    for numpy_path in PATHS:
        assert same_bits(_decode(v3, base, numpy_path, monkeypatch), target)
        assert same_bits(_decode(v2, base, numpy_path, monkeypatch), target)


def test_counts_cost_a_few_bytes_a_chunk():
    target, base = _pair(torch.bfloat16, 3 * GROUPED_CHUNK_BYTES // 2 + 5)
    v3, v2 = Lossless(zero_planes=False).encode(target, base), Lossless(context_counts=False).encode(target, base)
    extra = len(to_bytes(v3)) - len(to_bytes(v2))
    chunks = len(planes.read_info(memoryview(v2.arrays["stream"].numpy())).raw_lens)
    assert chunks >= 3 and 0 < extra < chunks * 4 * (8 + 32) + 100  # a bitmap and an int32 a present exponent, a chunk


def test_counts_are_the_same_on_any_thread_count(monkeypatch):
    target, base = _pair(torch.bfloat16, 5 * GROUPED_CHUNK_BYTES // 2 + 1)
    payloads = set()
    for threads in ("1", "3"):
        monkeypatch.setenv("DELTASTORE_THREADS", threads)
        enc = Lossless().encode(target, base)
        payloads.add(to_bytes(enc))
        assert same_bits(Lossless().reconstruct(enc, base), target)
    assert len(payloads) == 1


def _with_counts(enc, counts: np.ndarray):
    bad = from_bytes(to_bytes(enc))
    bad.arrays["counts"] = torch.from_numpy(np.asarray(counts, dtype=np.int32))
    return bad


def _refused(enc, base, monkeypatch, match: str) -> None:
    for numpy_path in PATHS:
        with pytest.raises(CorruptPayloadError, match=match):
            _decode(enc, base, numpy_path, monkeypatch)


def test_counts_that_do_not_fit_or_add_up_are_refused(monkeypatch):
    target, base = _pair(torch.bfloat16, GROUPED_CHUNK_BYTES + 1001)  # two chunks
    enc = Lossless().encode(target, base)
    flat = enc.arrays["counts"].numpy().astype(np.int64)
    first_k = int(np.unpackbits(flat[:8].astype("<u4").view(np.uint8)).sum())
    one = flat.copy()
    one[8] += 1  # a count one too many: the chunk no longer adds up
    _refused(_with_counts(enc, one), base, monkeypatch, "add up")
    shifted = flat.copy()
    big = 8 + int(np.argmax(flat[8 : 8 + first_k]))
    shifted[big] -= 1
    shifted[8 if big != 8 else 9] += 1  # adds up, every present context still present, not the base's histogram
    _refused(_with_counts(enc, shifted), base, monkeypatch, "another base")
    zero = flat.copy()
    zero[8], zero[9] = 0, zero[9] + zero[8]  # a context marked present with no element
    _refused(_with_counts(enc, zero), base, monkeypatch, "add up")
    negative = flat.copy()
    negative[8], negative[9] = -5, negative[9] + negative[8] + 5
    _refused(_with_counts(enc, negative), base, monkeypatch, "add up")
    _refused(_with_counts(enc, flat[:-1]), base, monkeypatch, "stop inside|add up")
    _refused(_with_counts(enc, flat[: 8 + first_k]), base, monkeypatch, "stop before")
    _refused(_with_counts(enc, np.concatenate([flat, [0]])), base, monkeypatch, "more than its chunks")
    bitmap = flat.copy()
    bitmap[0] ^= 1 << 31 if not bitmap[0] >> 31 & 1 else 0  # claims one more context present
    bitmap[7] |= 1 << 30
    _refused(_with_counts(enc, bitmap), base, monkeypatch, "stop inside|add up|more than")
    _refused(_with_counts(enc, []), base, monkeypatch, "stop before")


def test_a_v3_payload_without_its_counts_or_with_other_arrays_is_refused(monkeypatch):
    target, base = _pair()
    enc = from_bytes(to_bytes(Lossless().encode(target, base)))
    del enc.arrays["counts"]
    _refused(enc, base, monkeypatch, "context counts")
    enc = from_bytes(to_bytes(Lossless().encode(target, base)))
    enc.arrays["counts"] = enc.arrays["counts"].to(torch.int64)
    _refused(enc, base, monkeypatch, "context counts")
    enc = from_bytes(to_bytes(Lossless().encode(target, base)))
    enc.meta = {"mode": "diff"}
    _refused(enc, base, monkeypatch, "grouped by exponent")
    plain = Lossless().encode(target, None)
    assert plain.version == 1 and set(plain.arrays) == {"stream"}  # a plain payload is v1 whatever the writer


def test_another_base_is_refused_by_its_counts(monkeypatch):
    target, base = _pair(torch.bfloat16, 3 * GROUPED_CHUNK_BYTES // 4)
    enc = Lossless().encode(target, base)
    other = (base.float() * 8).to(torch.bfloat16)  # every exponent moved by 3
    _refused(enc, other, monkeypatch, "another base")
    nudged = base.clone()
    nudged[100] = (nudged[100].float() * 4).to(torch.bfloat16)  # one element's exponent moved
    _refused(enc, nudged, monkeypatch, "another base")


def test_pack_and_unpack_are_inverse():
    target, base = _pair(torch.float16, 2 * GROUPED_CHUNK_BYTES // 2 + 77)
    stream = Lossless(context_counts=False).encode(target, base).arrays["stream"].numpy()
    info = planes.read_info(memoryview(stream))
    rng = np.random.default_rng(0)
    counts = []
    for raw_len in info.raw_lens:
        c = np.zeros(256, np.int64)
        c[rng.choice(256, 30, replace=False)] = 1
        c[int(np.flatnonzero(c)[0])] += raw_len // 2 - 30
        counts.append(c)
    got = unpack_counts(pack_counts(info, counts), info)
    assert all(np.array_equal(a, b) for a, b in zip(got, counts))
