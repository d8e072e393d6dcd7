"""Hostile payloads: whatever bytes a store hands the payload reader, only CodecError comes out.

For every lossy codec, hypothesis tries 1000+ inputs of each kind on the path the store takes
(``from_bytes``, the codec from the payload's parameters, ``decode_delta`` and ``reconstruct``):
random bytes, random bytes behind a valid magic and length, the golden payloads with bytes
flipped, cut short or extended, and the golden payloads with one header field replaced by a value
of the wrong type, a huge or negative number, removed, or joined by an unknown one. The decode
limit is lowered for these tests so that a payload claiming a large shape is refused (or decoded
within a few MiB) and the process's peak memory is checked afterwards.
"""

from __future__ import annotations

import json
import resource
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltastore.codec import CodecError, codec_class, from_bytes
from deltastore.codec import checks
from deltastore.codec.serialize import MAGIC

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "codec"
LOSSY = ("delta-come", "lowrank", "bitdelta", "dare", "deltadq")
PAYLOADS = {c: [p.read_bytes() for p in sorted((FIXTURES / c).glob("v*/payload.bin"))] for c in LOSSY}
SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: Elements a hostile payload may decode to in these tests (the product default is 2**31).
TEST_DECODE_LIMIT = 2**16
tried = {"cases": 0}


@pytest.fixture(autouse=True, scope="module")
def small_decode_limit():
    old = checks.MAX_DECODE_ELEMENTS
    checks.MAX_DECODE_ELEMENTS = TEST_DECODE_LIMIT
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    checks.MAX_DECODE_ELEMENTS = old
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mib < 256, f"peak memory grew by {grown_mib:.0f} MiB while decoding hostile payloads"


def decode(buf: bytes) -> None:
    """What the store does with an object's bytes; returns or raises CodecError, nothing else."""
    tried["cases"] += 1
    try:
        enc = from_bytes(buf)
        codec = codec_class(enc.codec).from_config(enc.params)
        out = codec.decode_delta(enc)
        assert out.shape == tuple(enc.shape) and out.dtype == torch.float32
        codec.reconstruct(enc, None)
    except CodecError:
        pass


def split(buf: bytes) -> tuple[dict[str, Any], bytes]:
    (hlen,) = struct.unpack("<I", buf[4:8])
    return json.loads(buf[8 : 8 + hlen]), buf[8 + hlen :]


def join(head: Any, data: bytes) -> bytes:
    raw = json.dumps(head).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + data


def paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value: keys of objects, indices of lists, recursively."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths(v, prefix + (i,))
    return out


HUGE = [-1, 0, 1, 2**31, 2**32 + 1, 2**40, 2**53 + 1, 2**63, 2**64, 10**30, -(2**63), 1e308, -0.0, 0.5]
WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(HUGE),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["dare", "deltadq", "lowrank", "bitdelta", "delta-come", "float32", "bool", "int8", "Tensor", "uint64"]),
    st.lists(st.integers(min_value=-3, max_value=2**33), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(min_value=-3, max_value=9), max_size=2),
)


@st.composite
def header_mutation(draw, codec_id: str) -> bytes:
    buf = draw(st.sampled_from(PAYLOADS[codec_id]))
    head, data = split(buf)
    where = draw(st.sampled_from(paths(head)))
    parent = head
    for k in where[:-1]:
        parent = parent[k]
    how = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
    if how == "replace":
        parent[where[-1]] = draw(WRONG)
    elif how == "delete":
        del parent[where[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=6))] = draw(WRONG)
    else:
        parent.insert(where[-1], draw(WRONG))
    if draw(st.booleans()):  # also damage the array bytes now and then
        data = data[: draw(st.integers(0, len(data)))]
    return join(head, data)


@st.composite
def byte_mutation(draw, codec_id: str) -> bytes:
    buf = bytearray(draw(st.sampled_from(PAYLOADS[codec_id])))
    how = draw(st.sampled_from(["flip", "truncate", "extend", "length"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        del buf[draw(st.integers(0, len(buf) - 1)) :]
    elif how == "extend":
        buf += draw(st.binary(min_size=1, max_size=64))
    else:
        buf[4:8] = struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
    return bytes(buf)


def random_bytes() -> st.SearchStrategy[bytes]:
    framed = st.builds(lambda n, body: MAGIC + struct.pack("<I", n) + body, st.integers(0, 2**32 - 1), st.binary(max_size=200))
    return st.one_of(st.binary(max_size=300), framed)


def run_cases(strategy: st.SearchStrategy[bytes]) -> None:
    before = tried["cases"]
    given(strategy)(SETTINGS(lambda buf: decode(buf)))()
    assert tried["cases"] - before >= 1000


@pytest.mark.parametrize("codec_id", LOSSY)
def test_header_mutations_raise_codec_error(codec_id):
    run_cases(header_mutation(codec_id))


@pytest.mark.parametrize("codec_id", LOSSY)
def test_byte_mutations_raise_codec_error(codec_id):
    run_cases(byte_mutation(codec_id))


def test_random_bytes_raise_codec_error():
    run_cases(random_bytes())


def test_golden_payloads_decode():
    """The unmutated payloads decode, so the mutations start from valid input."""
    for codec_id in LOSSY:
        for buf in PAYLOADS[codec_id]:
            enc = from_bytes(buf)
            codec_class(codec_id).from_config(enc.params).decode_delta(enc)


@pytest.mark.parametrize("codec_id", LOSSY)
def test_an_empty_array_of_an_overflowing_shape_is_refused(codec_id):
    """Found by the fuzzer: a 0 beside two dimensions of 2**40 holds no bytes, but torch's strides of
    that shape overflow int64 (a RuntimeError, not a CodecError)."""
    head, data = split(PAYLOADS[codec_id][0])
    head["arrays"].insert(0, {"name": "hostile", "dtype": "float32", "shape": [0, 2**40, 2**40]})
    with pytest.raises(CodecError, match="spans more than"):
        from_bytes(join(head, data))
