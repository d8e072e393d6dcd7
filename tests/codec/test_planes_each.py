"""planes.decompress_each: chunk after chunk, the bytes planes.decompress gives."""

from __future__ import annotations

import numpy as np
import pytest

from deltastore.codec import planes
from deltastore.codec.errors import CorruptPayloadError


@pytest.mark.parametrize("width,rotate", [(1, False), (2, True), (2, False), (4, True), (8, False)])
def test_decompress_each_gives_the_stream_in_order(width: int, rotate: bool) -> None:
    rng = np.random.default_rng(width)
    raw = (rng.standard_normal(300_000) * 0.02).astype(np.float32).view(np.uint8)[: 300_000 * 4 // width * width]
    stream = planes.compress(raw, width, rotate=rotate, chunk_bytes=1 << 18)
    got, offsets = [], []
    n = planes.decompress_each(stream, lambda pos, chunk: (offsets.append(pos), got.append(chunk.copy())))
    assert n == raw.size and len(got) > 1
    assert offsets == np.cumsum([0] + [g.size for g in got[:-1]]).tolist()
    assert np.array_equal(np.concatenate(got), raw)
    assert np.array_equal(planes.decompress(stream), raw)


def test_decompress_each_refuses_a_grouped_stream() -> None:
    raw = np.arange(4096, dtype=np.uint16).view(np.uint8)
    stream = planes.compress(raw, 2, contexts=np.zeros(4096, np.uint8))
    with pytest.raises(CorruptPayloadError, match="contexts"):
        planes.decompress_each(stream, lambda pos, chunk: None)


def test_decompress_each_with_the_payloads_apart() -> None:
    raw = (np.random.default_rng(1).standard_normal(200_000) * 0.02).astype(np.float32).view(np.uint8)
    stream = planes.compress(raw, 4, rotate=True, chunk_bytes=1 << 17)
    start = planes.read_info(memoryview(stream)).data_start
    got = []
    planes.decompress_each(stream[:start], lambda pos, chunk: got.append(chunk.copy()), body=stream[start:])
    assert np.array_equal(np.concatenate(got), raw)
    with pytest.raises(CorruptPayloadError, match="truncated"):
        planes.decompress_each(stream[:start], lambda pos, chunk: None, body=stream[start:-1])
