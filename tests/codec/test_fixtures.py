"""Golden payloads (numcodecs' backwards-compatibility check): every lossy codec decodes every
format version it reads to the values committed when that version was written.

The fixtures live in tests/fixtures/codec/<id>/v<N>/ and are written once by
tests/fixtures/codec/make_fixtures.py, which never overwrites. So:
- a change to how a payload decodes fails ``test_fixture_decodes``;
- a change to what an encoder writes, without a new version, fails ``test_encoder_still_writes_the_format``;
- a new version without a fixture fails ``test_every_version_has_a_fixture``.

Exactness: dare, deltadq and bitdelta decode with elementwise IEEE float32 operations (unpack,
``(q - z) * s * c``, sign * scale), which give the same bits on every machine: they must match
exactly. lowrank and delta-come decode through matrix products (``c * A B^T``, ``U diag(S) V^T``,
and delta-come v2's Hadamard un-rotation), whose summation order is the BLAS library's choice;
they are held to the textbook rounding bound of a k-term float32 dot product,
``|err| <= k * 2**-24 * (|U| S |V|^T)`` elementwise, with k = rank + 64 (the un-rotation sums up
to 64 terms) and a factor 8 of slack.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deltastore.codec import EncodeContext, codec_class, from_bytes, to_bytes
from deltastore.codec.delta_come import DeltaCoMe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "codec"
LOSSY = ("delta-come", "lowrank", "bitdelta", "dare", "deltadq")
EXACT = ("bitdelta", "dare", "deltadq")
DIRS = sorted(p.parent for c in LOSSY for p in (FIXTURES / c).glob("v*/payload.bin"))


def _load(d: Path):
    info = json.loads((d / "fixture.json").read_text())
    payload = (d / "payload.bin").read_bytes()
    return info, payload, load_file(str(d / "inputs.safetensors")), load_file(str(d / "expected.safetensors"))["delta"]


def _rounding_bound(enc) -> torch.Tensor:
    """8 * k * 2**-24 * (|U| S |V|^T): how far a float32 product-of-factors decode may round."""
    if enc.codec == "lowrank":
        A, B, c = (enc.arrays[k].to(torch.float64) for k in ("A", "B", "c"))
        mag, k = c.abs() * (A.abs() @ B.abs().T), A.shape[1]
    else:
        U, S, V = (t.to(torch.float64) for t in DeltaCoMe().factors(enc))
        mag, k = (U.abs() * S.abs()) @ V.abs().T, S.numel()
    return (8 * (k + 64) * 2.0**-24 * mag).to(torch.float32)


def test_every_version_has_a_fixture():
    for codec_id in LOSSY:
        for v in range(1, codec_class(codec_id).version + 1):
            assert (FIXTURES / codec_id / f"v{v}" / "payload.bin").is_file(), f"{codec_id} v{v} has no golden fixture: run make_fixtures.py"


@pytest.mark.parametrize("d", DIRS, ids=[f"{d.parent.name}-{d.name}" for d in DIRS])
def test_fixture_decodes(d):
    info, payload, inputs, expected = _load(d)
    assert hashlib.sha256(payload).hexdigest() == info["payload_sha256"], "a committed payload was edited"
    enc = from_bytes(payload)
    assert (enc.codec, enc.version) == (info["codec"], info["version"]) == (d.parent.name, int(d.name[1:]))
    codec = codec_class(enc.codec).from_config(enc.params)
    got = codec.decode_delta(enc)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    if enc.codec in EXACT:
        assert torch.equal(got, expected)
        assert torch.equal(codec.reconstruct(enc, inputs["base"]), (inputs["base"].float() + expected).to(torch.bfloat16))
    else:
        assert bool(((got - expected).abs() <= _rounding_bound(enc)).all())
    assert to_bytes(enc) == payload  # parse and write back: the same bytes


@pytest.mark.parametrize("d", [d for d in DIRS if json.loads((d / "fixture.json").read_text())["written_by"] == "this tree"], ids=lambda d: f"{d.parent.name}-{d.name}")
def test_encoder_still_writes_the_format(d):
    """Encoding the committed inputs again writes the committed format: the same bytes where
    encoding is elementwise float math, the same header (layout, tiers, ranks) where it runs an SVD."""
    info, payload, inputs, _ = _load(d)
    codec = codec_class(info["codec"])(**info["config"])
    enc = codec.encode(inputs["target"], inputs["base"], EncodeContext(seed=info["seed"]))
    old = from_bytes(payload)
    if info["codec"] in EXACT:
        assert to_bytes(enc) == payload
    else:
        assert enc.header_bytes() == old.header_bytes()
