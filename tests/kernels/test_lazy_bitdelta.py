"""BitDelta fine-tunes served lazily: the sign bits applied straight from the packed words beside the
shared base (the Triton kernel on a GPU or under TRITON_INTERPRET=1; the torch reference with
KernelPreference.TORCH or a CPU model), against the materialized model; mixed with delta-come rows;
bad payloads refused at load time.

Bounds: the kernel and the reference compute a (x S^T) with exact products (x * +-1) and float32
sums in another order, so they agree to float32 rounding of the sum: within 1e-6 of the largest
|value| (a stated 4 * 2^-24 * K-term bound would be looser). The lazy model against the
materialized one as in test_lazy.py (logits within 2e-2 relative: bf16 rounding of W + D there).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deltastore import codec as codecs
from deltastore import lazy
from deltastore.codec.errors import CorruptPayloadError
from deltastore.kernels import DeltaLinear, KernelPreference, NotServableError, bitdelta_from_encoded
from deltastore.kernels import bitdelta as bd
from deltastore.kernels.triton_ops import usable

from .kernel_testlib import DEVICE, rel

transformers = pytest.importorskip("transformers")

from .test_lazy import _logits, rows_match_alone, two_of_a_codec_and_a_delta_come  # noqa: E402


def _payload(m: int, n: int, seed: int = 0) -> tuple[torch.Tensor, codecs.Encoded]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(m, n, generator=g).to(torch.bfloat16)
    target = (base.float() + 0.05 * torch.randn(m, n, generator=g)).to(torch.bfloat16)
    return base, codecs.get_codec("bitdelta").encode(target, base)


@pytest.mark.skipif(not usable(torch.zeros(1, device=DEVICE)), reason="needs triton (a GPU, or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m,n,rows", [(64, 96, 1), (70, 100, 5), (33, 260, 17), (128, 64, 40), (31, 33, 256)])
def test_kernel_matches_the_reference_and_touches_only_its_rows(m, n, rows, dtype) -> None:
    """Odd shapes (not multiples of the blocks or of 32), one row to 256, each activation dtype;
    rows whose id is another slot (or -1) keep what y held, bit for bit."""
    _, enc = _payload(m, n, seed=m + n)
    f = bitdelta_from_encoded(enc, (m, n)).to(DEVICE)
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, n, generator=g).to(dtype).to(DEVICE)
    ids = torch.randint(-1, 3, (rows,), generator=g).to(DEVICE)
    ids[0] = 1  # at least one row of the slot
    y0 = torch.randn(rows, m, generator=g).to(DEVICE)
    ref = bd.apply_ref(x, f, ids, 1, y0.clone())
    out = bd.apply_triton(x, f, ids, 1, y0.clone())
    # fp32 activations go through tf32 on a GPU's tensor cores (10-bit mantissa): a looser bound there
    tol = 1e-6 if dtype != torch.float32 or DEVICE == "cpu" else 2e-3
    assert (out - ref).abs().max().item() <= tol * ref.abs().max().item()
    others = ids != 1
    assert torch.equal(out[others], y0[others])
    assert not torch.equal(out[~others], y0[~others])  # the slot's rows did change


def test_payload_is_checked_at_load_time() -> None:
    base, enc = _payload(64, 96)
    f = bitdelta_from_encoded(enc, (64, 96))
    assert torch.equal(f.dense(), codecs.get_codec("bitdelta").decode_delta(enc))
    with pytest.raises(NotServableError, match="base weight is 64x97"):
        bitdelta_from_encoded(enc, (64, 97))
    bad = []
    for name, t in (("signs", enc.arrays["signs"][:, :-1]), ("signs", enc.arrays["signs"].to(torch.int64)),
                    ("scale", torch.tensor([float("nan")])), ("scale", torch.tensor([1.0, 2.0]))):
        bad.append(dataclasses.replace(enc, arrays={**enc.arrays, name: t}))
    for e in bad:
        with pytest.raises(CorruptPayloadError):
            bitdelta_from_encoded(e, (64, 96))
    with pytest.raises(NotServableError, match="not bitdelta"):
        bitdelta_from_encoded(codecs.get_codec("lowrank", alpha=0.5).encode(base.float().add(0.1).to(torch.bfloat16), base))


@pytest.fixture(scope="module")
def bitdelta_store(tmp_path_factory):
    store = two_of_a_codec_and_a_delta_come(tmp_path_factory.mktemp("lazy-bitdelta"), "bitdelta", "bd")
    yield store
    store.close()


@pytest.mark.parametrize("preference", ["auto", "triton"])
def test_lazy_bitdelta_matches_its_materialized_checkout(bitdelta_store, preference) -> None:
    """The default path (auto: the reference on a CPU model, the kernel on a GPU) and the kernel
    forced (under the interpreter on a CPU)."""
    store = bitdelta_store
    if preference == "triton" and not usable(torch.zeros(1, device=DEVICE)):
        pytest.skip("needs triton (a GPU, or TRITON_INTERPRET=1)")
    lz = lazy.load(store, "bd1", device=DEVICE)
    lins = [m for m in lz.modules() if isinstance(m, DeltaLinear)]
    assert len(lins) == 14 and all(len(m.bitdelta) == 1 and not m.deltas.holds_any and not len(m.lowrank) for m in lins)
    for m in lins:
        m.preference = KernelPreference(preference)
    full = lazy.load(store, "bd1", device=DEVICE, lazy=False)
    a, b = _logits(lz), _logits(full)
    base = _logits(lazy.load(store, "base", device=DEVICE))
    assert rel(a, b) < 2e-2
    assert rel(b, base) > 5 * rel(a, b)  # the fine-tune moved the logits far more than the two paths differ


def test_mixed_batch_of_bitdelta_and_delta_come_rows_match_each_alone(bitdelta_store) -> None:
    store = bitdelta_store
    many = lazy.load_many(store, ["bd1", "dc3", "bd2"], device=DEVICE)
    ids = torch.tensor([2, 1, -1])
    mixed = rows_match_alone(store, many, ["bd1", "dc3", "bd2"], ids)
    many.drop_delta("bd2")
    after = _logits(many, delta_ids=torch.tensor([-1, 1, 0]))
    assert rel(after[1:2], mixed[1:2]) < 1e-6  # the delta-come row unchanged by the drop
    assert many.add_delta("bd2") == 2
    assert rel(_logits(many, delta_ids=ids), mixed) < 1e-6
