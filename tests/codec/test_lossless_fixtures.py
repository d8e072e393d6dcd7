"""Golden lossless payloads (tests/fixtures/codec/lossless/v<N>/, written once by make_fixtures.py
there): every format version still decodes to the exact bits it was written from, and the
encoder configured for a version still writes that version's streams byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from deltastore.codec import from_bytes, planes, to_bytes
from deltastore.codec.lossless import Lossless

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "codec" / "lossless"
#: what each version's fixture config leaves out because it was the default when it was written
#: (v1's config, {"level": 3}, was written while by_exponent=False was the default; v2's before
#: context_counts existed, v3's before zero_planes)
WRITTEN_BY_DEFAULT = {1: {"by_exponent": False}, 2: {"context_counts": False}, 3: {"zero_planes": False}}
VERSIONS = sorted(int(p.name[1:]) for p in FIXTURES.glob("v*") if (p / "fixture.json").is_file())


def _load(version: int):
    d = FIXTURES / f"v{version}"
    return d, json.loads((d / "fixture.json").read_text()), load_file(str(d / "inputs.safetensors"))


def test_every_version_has_a_fixture():
    assert VERSIONS == list(range(1, Lossless.version + 1)), "run tests/fixtures/codec/lossless/make_fixtures.py"


@pytest.mark.parametrize("version", VERSIONS)
def test_fixture_decodes_to_the_exact_bits(version):
    d, info, inputs = _load(version)
    assert len(info["cases"]) >= 7
    for name, case in info["cases"].items():
        payload = (d / f"{name}.bin").read_bytes()
        assert hashlib.sha256(payload).hexdigest() == case["payload_sha256"]
        enc = from_bytes(payload)
        assert enc.version == case["payload_version"] and enc.meta["mode"] == case["mode"]
        out = Lossless().reconstruct(enc, inputs.get(f"{name}.base"))
        got = hashlib.sha256(out.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
        assert got == case["target_sha256"], name
        assert torch.equal(out.view(torch.uint8), inputs[f"{name}.target"].view(torch.uint8))


@pytest.mark.parametrize("version", VERSIONS)
def test_encoder_still_writes_the_format(version, monkeypatch):
    """The stream and its framing (format version, mode) are the format; the JSON params are not
    (v2 added a parameter to every header)."""
    d, info, inputs = _load(version)
    if info.get("min_group"):
        monkeypatch.setattr(planes, "MIN_GROUP", info["min_group"])
    monkeypatch.setattr(planes, "ACCEL", 0)  # the zstd settings the fixtures were written with
    codec = Lossless.from_config({**WRITTEN_BY_DEFAULT.get(version, {}), **info["config"]})
    for name in info["cases"]:
        want = from_bytes((d / f"{name}.bin").read_bytes())
        enc = codec.encode(inputs[f"{name}.target"], inputs.get(f"{name}.base"))
        assert (enc.version, enc.meta, enc.shape, enc.dtype) == (want.version, want.meta, want.shape, want.dtype), name
        assert enc.arrays.keys() == want.arrays.keys(), name
        assert torch.equal(enc.arrays["stream"], want.arrays["stream"]), f"{name}: the v{version} stream changed"
        if "counts" in want.arrays:
            assert torch.equal(enc.arrays["counts"], want.arrays["counts"]), f"{name}: the v{version} counts changed"


@pytest.mark.parametrize("version", VERSIONS)
def test_default_zstd_settings_change_only_the_frames(version, monkeypatch):
    """With the default zstd settings (planes.ACCEL: the search skips ahead) the encoder writes the
    fixture's layout (version, mode, chunks, groups and their contexts, counts) with other zstd
    frames inside, and they decode to the exact bits."""
    d, info, inputs = _load(version)
    if info.get("min_group"):
        monkeypatch.setattr(planes, "MIN_GROUP", info["min_group"])
    codec = Lossless.from_config({**WRITTEN_BY_DEFAULT.get(version, {}), **info["config"]})
    for name in info["cases"]:
        want = from_bytes((d / f"{name}.bin").read_bytes())
        base = inputs.get(f"{name}.base")
        enc = codec.encode(inputs[f"{name}.target"], base)
        assert (enc.version, enc.meta, enc.arrays.keys()) == (want.version, want.meta, want.arrays.keys()), name
        got, old = (planes.read_info(memoryview(e.arrays["stream"].numpy())) for e in (enc, want))
        assert (got.width, got.rotate, got.raw_total, got.raw_lens) == (old.width, old.rotate, old.raw_total, old.raw_lens)
        if old.groups is not None:
            assert [[(g.context, g.n) for g in c] for c in got.groups] == [[(g.context, g.n) for g in c] for c in old.groups]
        if "counts" in want.arrays:
            assert torch.equal(enc.arrays["counts"], want.arrays["counts"]), name
        out = Lossless().reconstruct(from_bytes(to_bytes(enc)), base)
        assert torch.equal(out.view(torch.uint8), inputs[f"{name}.target"].view(torch.uint8)), name


def test_the_default_encoder_writes_v4():
    """New lossless deltas are v4 (grouped by the base's exponent, each chunk's context counts
    stored, all-zero planes without a payload); v1 to v3 stay readable and writable. The v4
    fixture holds zero planes (plane mode 3) of a 2-byte and of a 4-byte difference."""
    assert Lossless.from_config(_load(4)[1]["config"]) == Lossless()
    d, info, inputs = _load(4)
    enc = Lossless().encode(inputs["bf16_diff.target"], inputs["bf16_diff.base"])
    assert enc.version == 4 and enc.meta == {"mode": "diff", "context": "exponent"} and "counts" in enc.arrays
    for name in ("bf16_small_diff", "fp32_diff"):
        stream = from_bytes((d / f"{name}.bin").read_bytes()).arrays["stream"].numpy()
        assert planes.ZERO_MODE in [m for c in planes.read_info(memoryview(stream)).modes for m in c], name


PLANE_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "codec" / "planes" / "palette"


@pytest.mark.parametrize("compiled", [True, False])
def test_palette_plane_stream_fixture(compiled, monkeypatch):
    """The committed b"DSP1" stream with palette chunks (plane mode 2) decodes to its input's exact
    bits, whole and by byte range, and the encoder (numba or numpy) still writes it byte for byte."""
    from deltastore.codec import palette

    if not compiled:
        monkeypatch.setattr(palette, "_KERNELS", None)
    info = json.loads((PLANE_FIXTURE / "fixture.json").read_text())
    raw, stream = (PLANE_FIXTURE / "input.bin").read_bytes(), (PLANE_FIXTURE / "stream.bin").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == info["input_sha256"]
    assert hashlib.sha256(stream).hexdigest() == info["stream_sha256"], "a committed stream was edited"
    assert planes.read_info(memoryview(stream)).modes == info["modes"] and [2, 2] in info["modes"]
    assert planes.decompress(stream).tobytes() == raw
    assert planes.decompress_range(stream, 16383, 33001).tobytes() == raw[16383:33001]
    s = dict(info["settings"])
    monkeypatch.setattr(planes, "ACCEL", 0)  # the zstd settings the fixture was written with
    assert planes.compress(np.frombuffer(raw, np.uint8), s.pop("width"), **s) == stream
