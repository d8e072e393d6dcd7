"""What the payload reader says about a bad payload: one CodecError a user can act on, naming what
is wrong (the hypothesis tests in test_hostile_payloads.py check that nothing else ever escapes)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from deltastore.codec import CodecError, CorruptPayloadError, Encoded, from_bytes, get_codec, to_bytes
from deltastore.codec import checks
from deltastore.codec.serialize import MAGIC

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "codec"


def golden(codec_id: str, version: int) -> bytes:
    return (FIXTURES / codec_id / f"v{version}" / "payload.bin").read_bytes()


def rewrite(buf: bytes, edit) -> bytes:
    (hlen,) = struct.unpack("<I", buf[4:8])
    head = json.loads(buf[8 : 8 + hlen])
    edit(head)
    raw = json.dumps(head).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + buf[8 + hlen :]


def test_the_header_bytes_are_what_is_written():
    enc = from_bytes(golden("lowrank", 1))
    assert to_bytes(enc)[8 : 8 + len(enc.header_bytes())] == enc.header_bytes()
    assert enc.nbytes == len(enc.header_bytes()) + sum(a.numel() * a.element_size() for a in enc.arrays.values())


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\0", "trailing bytes"),
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:4] + struct.pack("<I", 2**31) + b[8:], "its header claims"),
        (lambda b: rewrite(b, lambda h: h.update(version=9)), "upgrade deltastore"),
        (lambda b: rewrite(b, lambda h: h.update(version="1")), "version must be"),
        (lambda b: rewrite(b, lambda h: h.update(codec="nope")), "unknown codec"),
        (lambda b: rewrite(b, lambda h: h.update(codec="dare")), "bad parameters"),
        (lambda b: rewrite(b, lambda h: h["params"].update(rank=3)), "bad parameters"),
        (lambda b: rewrite(b, lambda h: h["params"].update(alpha=7)), "bad parameters"),
        (lambda b: rewrite(b, lambda h: h["meta"].update(rank=5)), "expected"),
        (lambda b: rewrite(b, lambda h: h["meta"].update(rank=True)), "meta 'rank' must be an integer"),
        (lambda b: rewrite(b, lambda h: h.update(shape=[16, 64, 1])), "2-D matrix"),
        (lambda b: rewrite(b, lambda h: h.update(shape=[2**20, 2**20])), "over the decode limit"),
        (lambda b: rewrite(b, lambda h: h.update(dtype="int8")), "target dtype"),
        (lambda b: rewrite(b, lambda h: h.update(dtype="Tensor")), "not a torch dtype"),
        (lambda b: rewrite(b, lambda h: h["arrays"][0].update(shape=[2**41, 2])), "must hold integers"),
        (lambda b: rewrite(b, lambda h: h["arrays"][0].update(shape=[2**30, 2**10])), "truncated"),
        (lambda b: rewrite(b, lambda h: h["arrays"][0].update(dtype="complex64")), "unknown dtype"),
        (lambda b: rewrite(b, lambda h: h["arrays"].append(h["arrays"][0])), "appears twice"),
        (lambda b: rewrite(b, lambda h: h.pop("params")), "lacks 'params'"),
        (lambda b: b[:8] + b"[" * 5000 + b[8 + 5000 :], "not JSON"),
        (lambda b: rewrite(b, lambda h: h["meta"].update(rank=float("nan"))), "not JSON"),
    ],
)
def test_malformed_lowrank_payloads_say_what_is_wrong(mutate, message):
    with pytest.raises(CodecError, match=message):
        from_bytes(mutate(golden("lowrank", 1)))


def test_non_finite_scales_are_damage():
    enc = from_bytes(golden("bitdelta", 1))
    enc.arrays["scale"] = torch.tensor([float("nan")])
    with pytest.raises(CorruptPayloadError, match="NaN or infinite"):
        from_bytes(to_bytes(enc))
    assert from_bytes(to_bytes(enc), check=False).codec == "bitdelta"  # structure alone still parses


@pytest.mark.parametrize("codec_id,version", [("dare", 1), ("dare", 2), ("deltadq", 2)])
def test_altered_seed_is_caught(codec_id, version):
    """v2 checks the mask's checksum; dare v1 only its kept count (which a different seed almost
    surely changes). deltadq v1 cannot notice at all: its balanced mask keeps the same count for
    every seed, one reason v2 records a checksum."""
    enc = from_bytes(golden(codec_id, version))
    enc.meta["seed"] += 1
    with pytest.raises(CorruptPayloadError, match="mask"):
        get_codec(codec_id).decode_delta(enc)


def test_a_payload_that_kept_nothing_decodes_within_the_limit(monkeypatch):
    """A rank-0 payload's arrays do not bound its shape: the decode limit does."""
    codec = get_codec("lowrank")
    enc = codec.encode(torch.randn(4, 4), torch.zeros(4, 4))
    assert enc.meta["rank"] == 0
    assert torch.equal(codec.decode_delta(from_bytes(to_bytes(enc))), torch.zeros(4, 4))
    big = Encoded(**{**enc.__dict__, "shape": (2**16, 2**16), "arrays": {"A": torch.zeros(2**16, 0, dtype=torch.float16), "B": torch.zeros(2**16, 0, dtype=torch.float16), "c": enc.arrays["c"]}})
    monkeypatch.setattr(checks, "MAX_DECODE_ELEMENTS", 2**20)
    with pytest.raises(CorruptPayloadError, match="decode limit"):
        codec.decode_delta(from_bytes(to_bytes(big)))
