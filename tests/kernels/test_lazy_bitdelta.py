"""BitDelta fine-tunes served lazily: the sign bits applied straight from the packed words beside the
shared base (the Triton kernel on a GPU or under TRITON_INTERPRET=1; the torch reference with
KernelPreference.TORCH or a CPU model), against the materialized model; mixed with delta-come rows;
bad payloads refused at load time.

Bounds: the kernel and the reference compute a (x S^T) with exact products (x * +-1) and float32
sums in another order, so they agree to float32 rounding of the sum: within 1e-6 of the largest
|value| (a stated 4 * 2^-24 * K-term bound would be looser). The lazy model against the
materialized one as in test_lazy.py (logits within 2e-2 relative: bf16 rounding of W + D there).
On a GPU the tl.dot path takes fp32 activations as tf32 (10-bit mantissa): 2e-3 of the largest
|value| there. Split-K adds its splits' sums into y by atomic adds: float32 rounding again, in
any order, within the same bound.
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


def _case(m: int, n: int, rows: int, dtype: torch.dtype, n_ids: int = 3, seed: int = 0):
    _, enc = _payload(m, n, seed=seed)
    f = bitdelta_from_encoded(enc, (m, n)).to(DEVICE)
    g = torch.Generator().manual_seed(seed + rows)
    x = torch.randn(rows, n, generator=g).to(dtype).to(DEVICE)
    ids = torch.randint(-1, n_ids, (rows,), generator=g).to(DEVICE)
    ids[rows // 2] = 1  # at least one row of the slot
    y0 = torch.randn(rows, m, generator=g).to(DEVICE)
    return f, x, ids, y0


def _tol(dtype: torch.dtype, path: str) -> float:
    return 2e-3 if (dtype == torch.float32 and path == "dot" and DEVICE != "cpu") else 1e-6


def _check(out: torch.Tensor, ref: torch.Tensor, y0: torch.Tensor, ids: torch.Tensor, tol: float) -> None:
    assert (out - ref).abs().max().item() <= tol * ref.abs().max().item()
    others = ids != 1
    assert torch.equal(out[others], y0[others])  # other slots' rows and -1 rows: bit for bit
    assert not torch.equal(out[~others], y0[~others])


needs_triton = pytest.mark.skipif(not usable(torch.zeros(1, device=DEVICE)), reason="needs triton (a GPU, or TRITON_INTERPRET=1)")

CONFIGS = [  # every path, split-K 1 to past the steps K has, blocks past the shapes, compaction on and off
    bd.LaunchConfig("gemv", 1, 64, 128, 1), bd.LaunchConfig("gemv", 1, 32, 64, 3), bd.LaunchConfig("gemv", 4, 16, 256, 8, compact=True),
    bd.LaunchConfig("dot", 16, 64, 128, 1, num_stages=3), bd.LaunchConfig("dot", 16, 32, 32, 5, compact=True),
    bd.LaunchConfig("dot", 64, 128, 64, 2, compact=True), bd.LaunchConfig("dot", 128, 64, 64, 8),
]


@needs_triton
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.label().replace(" ", "-"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m,n,rows", [(70, 300, 1), (33, 260, 7), (96, 200, 40)])
def test_each_launch_config_matches_the_reference(m, n, rows, dtype, cfg) -> None:
    """Any config serves any batch (the default only picks among them): split-K sums (a split per
    32 inputs here, more splits than steps fitted down), the bf16/fp16 tensor-core dot and the
    GEMV, blocks larger than the shapes, odd shapes (n not a multiple of 32: a partial last word)."""
    f, x, ids, y0 = _case(m, n, rows, dtype, seed=m)
    ref = bd.apply_ref(x, f, ids, 1, y0.clone())
    out = bd.apply_triton(x, f, ids, 1, y0.clone(), config=cfg)
    _check(out, ref, y0, ids, _tol(dtype, cfg.path))


@needs_triton
@pytest.mark.parametrize("rows", [1, 2, 5, 16, 17, 64, 100, 256])
def test_default_launch_from_one_row_to_256(rows) -> None:
    """The default config at each batch size (GEMV, 16- to 128-row dot blocks, split-K as the
    shapes give it), bf16 activations: products exact, float32 sums."""
    f, x, ids, y0 = _case(96, 160, rows, torch.bfloat16, seed=rows)
    ref = bd.apply_ref(x, f, ids, 1, y0.clone())
    _check(bd.apply_triton(x, f, ids, 1, y0.clone()), ref, y0, ids, 1e-6)


@needs_triton
@pytest.mark.parametrize("hint", [1, 4, None])
def test_compacted_rows_serve_any_spread(hint) -> None:
    """A launch told its slot has ``hint`` rows (BitDeltaSet.delta's guess: rows / slots) serves
    whatever spread the ids have: here 40 of 64 rows are the slot's, and rows of the slot sit after
    rows of others; the set's several slots all land, each on its own rows."""
    m, n = 48, 130
    _, enc = _payload(m, n, seed=5)
    f = bitdelta_from_encoded(enc, (m, n)).to(DEVICE)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(64, n, generator=g).to(torch.bfloat16).to(DEVICE)
    ids = torch.full((64,), 1, dtype=torch.int64)
    ids[torch.randperm(64, generator=g)[:24]] = torch.tensor([0, 2, -1]).repeat(8)
    ids = ids.to(DEVICE)
    y0 = torch.randn(64, m, generator=g).to(DEVICE)
    ref = bd.apply_ref(x, f, ids, 1, y0.clone())
    _check(bd.apply_triton(x, f, ids, 1, y0.clone(), rows=hint), ref, y0, ids, 1e-6)
    s = bd.BitDeltaSet(n, m, DEVICE)
    fs = {t: bitdelta_from_encoded(_payload(m, n, seed=t)[1], (m, n)) for t in (0, 1, 2)}
    for t, ft in fs.items():
        s.add(ft, t)
    want = torch.zeros(64, m, device=DEVICE)
    for t, ft in fs.items():
        bd.apply_ref(x, ft.to(DEVICE), ids, t, want)
    got = s.delta(x, ids)
    assert (got - want).abs().max().item() <= 1e-6 * want.abs().max().item()
    assert torch.equal(got[ids == -1], torch.zeros_like(got[ids == -1]))


@pytest.mark.parametrize("M,N,K,rows", [(1, 4096, 4096, None), (1, 4096, 11008, None), (16, 12288, 4096, None), (256, 22016, 4096, None),
                                        (32, 4096, 4096, 4), (7, 100, 33, None), (3000, 64, 64, 2)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_default_config_is_a_function_of_shapes(M, N, K, rows, dtype) -> None:
    """pick_config: the path by the slot's rows, block rows cover them (up to 128), the split
    leaves no split without a step and keeps at most MAX_SPLIT_K, compaction exactly when the slot
    is said to have fewer rows than the batch; the same answer every time (a graph captures it)."""
    cfg = bd.pick_config(M, N, K, dtype, rows)
    r = rows or M
    assert cfg == bd.pick_config(M, N, K, dtype, rows)
    assert cfg.path == ("gemv" if r <= bd.GEMV_MAX_ROWS else "dot")
    assert cfg.block_m >= min(r, 128) and cfg.block_k % 32 == 0
    steps = -(-K // cfg.block_k)
    per = -(-steps // cfg.split_k)
    assert 1 <= cfg.split_k <= min(bd.MAX_SPLIT_K, steps) and (cfg.split_k - 1) * per < steps
    assert cfg.compact == (r < M)
    if r <= 16 and N <= 4096 and steps >= 8:  # unsplit: 64 column blocks (programs) on 132 multiprocessors
        assert cfg.split_k > 1


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
