"""The mma kernels' unpack (kernels/mma.py), checked on the CPU: its inline PTX strings run through
a small emulator of the four instructions they use, fed the words each thread's MMA fragment
reads, must give the codec's own values (``quant.pack`` / ``quant.unpack``) as bf16 128 + q (or
the nibbles of an 8-bit q), at the k the kernel says each MMA slot holds (``mma.perm``).

What this covers: the bit layout of every width (2, 3, 8 bits; the shrink's V^ rows packed along
k, the expand's U^ columns packed along n) and the fragment mapping of mma.sync m16n8k16's A
operand (thread lane l: rows l // 4 and l // 4 + 8, k slots 2 (l % 4), + 1, + 8, + 9; Triton packs
a thread's elements (i, k), (i, k + 1), (i + 8, k), (i + 8, k + 1) into one asm call). The Gluon
kernels themselves need a GPU (Triton's interpreter does not run Gluon): tests/kernels/test_mma.py
runs them there against the torch reference.
"""

from __future__ import annotations

import re

import pytest
import torch

from deltastore.codec import quant
from deltastore.kernels import mma

M32 = 0xFFFFFFFF


def run_ptx(asm: str, regs: dict[int, int]) -> dict[int, int]:
    """Execute one of the kernels' asm strings on 32-bit values: $N operands from ``regs``."""
    env: dict[str, int] = {f"${k}": v & M32 for k, v in regs.items()}

    def val(tok: str) -> int:
        tok = tok.strip()
        if tok in env:
            return env[tok]
        return int(tok, 0) & M32

    body = asm.strip().strip("{}")
    for ins in (i.strip() for i in body.split(";")):
        if not ins or ins.startswith(".reg"):
            continue
        op, rest = ins.split(None, 1)
        args = [a.strip() for a in rest.split(",")]
        d = args[0]
        if op == "shr.b32":
            out = val(args[1]) >> (val(args[2]) & 31) if val(args[2]) < 32 else 0
        elif op == "shl.b32":
            out = (val(args[1]) << val(args[2])) & M32 if val(args[2]) < 32 else 0
        elif op == "lop3.b32":
            assert args[4] == "0xea", "the kernels use lop3 0xea only: (a & b) | c"
            out = (val(args[1]) & val(args[2])) | val(args[3])
        elif op == "prmt.b32":
            a, b, c = val(args[1]), val(args[2]), val(args[3])
            pool = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
            out = sum(pool[(c >> (4 * i)) & 0x7] << (8 * i) for i in range(4))  # default mode, no sign replicate
        else:
            raise AssertionError(f"unexpected instruction {op}")
        env[d] = out & M32
    return {int(k[1:]): v for k, v in env.items() if re.fullmatch(r"\$\d+", k)}


def halves(v: int) -> tuple[int, int]:
    """The bf16 pair in a register, as (low, high) integers 128 + q (asserting the 128 exponent)."""
    lo, hi = v & 0xFFFF, v >> 16
    for h in (lo, hi):
        assert h & 0xFF80 == 0x4300, f"{h:#06x} is not a bf16 in [128, 256)"
    return (lo & 0x7F) + 128, (hi & 0x7F) + 128


def packed_rows(rows: int, length: int, bits: int, seed: int) -> tuple[torch.Tensor, list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 1 << bits, (rows, length), generator=g)
    words = quant.pack(q, bits)
    assert torch.equal(quant.unpack(words, bits, length), q)
    return words, q.tolist()


def w32(words: torch.Tensor, r: int, i: int) -> int:
    return int(words[r, i]) & M32


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_shrink_fragments_give_the_codec_values_at_the_permuted_k(bits: int) -> None:
    K = 256 + (32 if bits != 8 else 0)  # two groups, the last short where the width allows (rows pad to 32)
    words, q = packed_rows(16, K, bits, seed=bits)
    assert sorted(mma.perm(bits, s) for s in range(16)) == list(range(16))
    for r in (0, 5):
        for k16 in range(0, K, 16):
            for t in range(4):  # lane % 4
                for u in (2 * t, 2 * t + 8):  # the thread's slot pairs (u, u + 1)
                    rows = (r, r + 8)
                    if bits == 2:
                        wi = k16 // 16
                        regs = {2: w32(words, rows[0], wi), 4: w32(words, rows[1], wi), 6: 2 * (u // 2)}
                        outs = [run_ptx(mma.ASM_V2, regs)]
                    elif bits == 3:
                        c32, half = k16 // 32, (k16 // 16) % 2
                        wl, wh = 3 * c32 + half, 3 * c32 + 2
                        regs = {2: w32(words, rows[0], wl), 4: w32(words, rows[1], wl), 6: w32(words, rows[0], wh),
                                8: w32(words, rows[1], wh), 10: 2 * (u // 2), 14: 16 * half + u // 2}
                        outs = [run_ptx(mma.ASM_V3, regs)]
                    else:
                        wi = k16 // 4 + (u % 8) // 2
                        regs = {2: w32(words, rows[0], wi), 4: w32(words, rows[1], wi), 6: 16 * (u // 8)}
                        outs = [run_ptx(mma.ASM_V8_HI, regs), run_ptx(mma.ASM_V8_LO, regs)]
                    for j, row in enumerate(rows):
                        want = [q[row][k16 + mma.perm(bits, u)], q[row][k16 + mma.perm(bits, u + 1)]]
                        if bits == 8:
                            hi, lo = halves(outs[0][j]), halves(outs[1][j])
                            got = [16 * (h - 128) + (lw - 128) for h, lw in zip(hi, lo)]
                        else:
                            got = [v - 128 for v in halves(outs[0][j])]
                        assert got == want, (bits, r, k16, t, u, j)


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_expand_fragments_give_the_codec_values(bits: int) -> None:
    N = 256 + 32  # outputs; the last group short
    words, q = packed_rows(32, N, bits, seed=10 + bits)  # 32 components (rows of U^ as packed)
    for r in (0, 2, 16):  # the register pair's components r, r + 1
        for n in [n0 + i for n0 in range(0, N, 16) for i in range(8)]:  # a thread's row n (n % 16 < 8) and n + 8
            if bits == 2:
                wi = n // 16
                regs = {2: w32(words, r, wi), 3: w32(words, r + 1, wi), 6: 2 * (n % 8)}
                outs = [run_ptx(mma.ASM_U2, regs)]
            elif bits == 3:
                wl, wh = 3 * (n // 32) + (n % 32) // 16, 3 * (n // 32) + 2
                regs = {2: w32(words, r, wl), 3: w32(words, r + 1, wl), 6: w32(words, r, wh), 7: w32(words, r + 1, wh),
                        10: 2 * (n % 8), 14: n % 32}
                outs = [run_ptx(mma.ASM_U3, regs)]
            else:
                b = n % 4
                sel = b + (b << 4) + ((b + 4) << 8) + ((b + 4) << 12)
                regs = {2: w32(words, r, n // 4), 3: w32(words, r + 1, n // 4), 4: w32(words, r, (n + 8) // 4),
                        5: w32(words, r + 1, (n + 8) // 4), 6: sel}
                outs = [run_ptx(mma.ASM_U8_HI, regs), run_ptx(mma.ASM_U8_LO, regs)]
            for j, nn in enumerate((n, n + 8)):
                want = [q[r][nn], q[r + 1][nn]]
                if bits == 8:
                    hi, lo = halves(outs[0][j]), halves(outs[1][j])
                    got = [16 * (h - 128) + (lw - 128) for h, lw in zip(hi, lo)]
                else:
                    got = [v - 128 for v in halves(outs[0][j])]
                assert got == want, (bits, r, n, j)


def test_a_wrong_shift_or_selector_is_seen() -> None:
    """The checks above can fail: with every field distinct, the 2-bit shrink shifted by one field,
    and the expand's pairing of the wrong halves, give other values than the codec's."""
    q = torch.tensor([[i % 4 for i in range(32)], [(i + 1) % 4 for i in range(32)]])
    words = quant.pack(q, 2)
    right = run_ptx(mma.ASM_V2, {2: w32(words, 0, 0), 4: w32(words, 1, 0), 6: 0})
    wrong = run_ptx(mma.ASM_V2, {2: w32(words, 0, 0), 4: w32(words, 1, 0), 6: 2})
    assert [v - 128 for v in halves(right[0])] == [q[0, mma.perm(2, 0)], q[0, mma.perm(2, 1)]]
    assert [v - 128 for v in halves(wrong[0])] != [q[0, mma.perm(2, 0)], q[0, mma.perm(2, 1)]]
    q = torch.tensor([[(i // 8) % 4 for i in range(32)], [(i // 8 + 2) % 4 for i in range(32)]])  # fields n, n + 8 differ
    words = quant.pack(q, 2)
    right = run_ptx(mma.ASM_U2, {2: w32(words, 0, 0), 3: w32(words, 1, 0), 6: 2})
    swapped = run_ptx(mma.ASM_U2.replace("0x5410", "0x7632", 1), {2: w32(words, 0, 0), 3: w32(words, 1, 0), 6: 2})
    assert [v - 128 for v in halves(right[0])] == [q[0, 1], q[1, 1]]
    assert [v - 128 for v in halves(swapped[0])] != [q[0, 1], q[1, 1]]


def test_the_kernels_serve_1_to_32_rows_a_fine_tune_and_2_to_32_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default choice (mma.use_mma), the device aside: several fine-tunes with 1..32 rows each in a batch of 2+,
    one fine-tune's batches of 2..32 rows (where the H200 measured them faster or level: one row the GEMV
    kernels, more the dense path), whether the set holds one or the host knows one serves every row."""
    from deltastore.kernels import DeltaSet, plan_rows
    from deltastore.kernels.deltaset import host_hint

    monkeypatch.setattr(mma, "usable", lambda x, dset: True)
    sets = {}
    for slots in (1, 8):
        ds = DeltaSet(64, [64])
        for _ in range(slots):
            ds.add([None])  # only the slot count matters to the choice
        sets[slots] = ds
    x = torch.empty(1, 64)

    def plan(M: int, slots: int, known: bool = False):  # noqa: ANN202
        ids = torch.arange(M) % slots
        p = plan_rows(ids, slots)
        if known:
            p.only_slot, p.base_rows = host_hint(torch.zeros(M, dtype=torch.int64))
        return p

    assert mma.use_mma(x, sets[8], plan(32, 8))  # 4 rows each
    assert mma.use_mma(x, sets[8], plan(16, 8))  # 2 each
    assert mma.use_mma(x, sets[8], plan(128, 8))  # 16 each
    assert mma.use_mma(x, sets[8], plan(8, 8))  # 1 each (H200 s35: 0.92x the GEMV kernels' layer)
    assert not mma.use_mma(x, sets[8], plan(1, 8))  # one row in all: the GEMV kernels, as for one fine-tune
    assert mma.use_mma(x, sets[8], plan(256, 8))  # 32 each: a row block of 32 a fine-tune
    assert not mma.use_mma(x, sets[8], plan(264, 8))  # 33 each: the tl.dot kernels
    assert mma.use_mma(x, sets[1], plan(8, 1)) and mma.use_mma(x, sets[1], plan(32, 1))  # one fine-tune
    assert mma.use_mma(x, sets[1], plan(2, 1)) and mma.use_mma(x, sets[1], plan(4, 1))
    assert not mma.use_mma(x, sets[1], plan(1, 1)) and not mma.use_mma(x, sets[1], plan(33, 1))  # 33+: the dense path
    assert not mma.use_mma(x, sets[8], plan(33, 8, known=True))  # the host knows one serves all 33 rows
    assert mma.use_mma(x, sets[8], plan(3, 8, known=True)) and not mma.use_mma(x, sets[8], plan(1, 8, known=True))
    assert mma.use_mma(x, sets[1], plan(8, 1), "mma") and not mma.use_mma(x, sets[8], plan(32, 8), "gemv")
    # rows of no fine-tune beside one fine-tune's, the ids on the host (DeltaContext.plan): the
    # choice counts the rows that name it (H200 s28: one such row beside two base rows went to these
    # kernels and gave it other numbers than alone; the GEMV kernels serve one row faster)
    from deltastore.kernels import DeltaContext

    for ids, rows, served, want in (([-1, 1, -1], 3, 1, False), ([1, -1, 1], 3, 2, True), ([-1] * 20 + [1] * 4, 24, 4, True),
                                    ([-1, 1, -1], 6, 2, True), ([-1, 1, -1], 3 * 17, 17, True), ([-1, 1, -1], 3 * 33, 33, False)):
        ctx = DeltaContext(8)
        ctx.set(torch.tensor(ids))  # one id per row, or per sequence of rows // len(ids) tokens
        p = ctx.plan(rows, torch.device("cpu"))
        assert (p.only_slot, p.served, p.served_rows) == (1, served, served)
        assert mma.use_mma(x, sets[8], p) is want and p.rows_a_slot(sets[8].n_slots) == served, (ids, rows)
    from deltastore.kernels import deltaset

    ctx = DeltaContext(8)
    ctx.set(torch.tensor([-1, 1, -1]))
    p = ctx.plan(51, torch.device("cpu"))  # 17 rows of the fine-tune in 51
    assert mma.use_mma(x, sets[8], p)
    monkeypatch.setattr(deltaset, "COUNT_SERVED", False)  # the A/B knob: every row counts again
    assert p.served_rows == 51 and not mma.use_mma(x, sets[8], p)
    monkeypatch.setattr(deltaset, "COUNT_SERVED", True)
    unknown = plan_rows(torch.tensor([-1, 1, -1]), 1)  # ids the host never saw: every row counts
    assert unknown.served is None and unknown.served_rows == 3 and mma.use_mma(x, sets[1], unknown)


def test_a_row_block_holds_a_slots_rows_up_to_block_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """mma.block_m: the smallest of 8, 16, 32, 64 rows that holds a slot's rows, at most BLOCK_ROWS
    (more rows: more blocks, plan_blocks); a bad DELTASTORE_MMA_BLOCK_ROWS is refused with one clear error."""
    from deltastore.kernels import DeltaSet, KernelError, plan_rows

    one, eight = DeltaSet(64, [64]), DeltaSet(64, [64])
    one.add([None])
    for _ in range(8):
        eight.add([None])
    for cap, want in ((16, {1: 8, 8: 8, 9: 16, 24: 16, 64: 16}), (32, {1: 8, 9: 16, 17: 32, 24: 32, 40: 32}),
                      (64, {8: 8, 16: 16, 24: 32, 33: 64, 64: 64, 256: 64})):
        monkeypatch.setattr(mma, "BLOCK_ROWS", cap)
        for M, bm in want.items():
            assert mma.block_m(plan_rows(torch.zeros(M, dtype=torch.int64), 1), one) == bm, (cap, M)
        assert mma.block_m(plan_rows(torch.arange(256) % 8, 8), eight) == min(cap, 32)  # 32 rows a slot
    monkeypatch.setattr(mma, "BLOCK_ROWS", 48)
    with pytest.raises(KernelError, match="DELTASTORE_MMA_BLOCK_ROWS must be 8, 16, 32 or 64, not 48"):
        mma.block_m(plan_rows(torch.zeros(4, dtype=torch.int64), 1), one)


@pytest.mark.skipif(not mma.HAVE_GLUON, reason="Triton with Gluon (its layouts)")
@pytest.mark.parametrize("bm", [8, 32, 64])
def test_the_paired_x_tile_gives_each_thread_8_contiguous_mma_slots(bm: int) -> None:
    """mma.x_pairs: the shrink's [bm, 128] x tile as each thread loads it (the layout's bases, an
    element's (row, k) the XOR of the bases its register, lane and warp bits pick) covers every element
    once, and a thread's registers of a row are k c..c + 3 and c + 8..c + 11 (two 8-byte loads), which
    the unpack's pairing puts in 8 contiguous MMA slots (slot 2a + b of each 16 holds k = a + 8b; the
    kernel's relabel, :func:`mma.perm`): one 16-byte store a thread and row."""
    lay = mma.x_pairs(bm)
    assert list(lay.shape) == [bm, 128]

    def at(bases: list, i: int) -> tuple[int, int]:
        r = k = 0
        for bit, (br, bk) in enumerate(bases):
            if i >> bit & 1:
                r, k = r ^ br, k ^ bk
        return r, k

    inv = {mma.perm(2, s): s for s in range(16)}  # k within its 16-k tile -> its slot
    seen = set()
    for warp in range(1 << len(lay.warp_bases)):
        for lane in range(32):
            wr, wk = at(lay.warp_bases, warp)
            lr, lk = at(lay.lane_bases, lane)
            mine: dict[int, list[int]] = {}
            for reg in range(1 << len(lay.reg_bases)):
                rr, rk = at(lay.reg_bases, reg)
                row, k = wr ^ lr ^ rr, wk ^ lk ^ rk
                seen.add((row, k))
                mine.setdefault(row, []).append(k)
            for row, ks in mine.items():
                c = min(ks)
                assert sorted(ks) == [c, c + 1, c + 2, c + 3, c + 8, c + 9, c + 10, c + 11], (warp, lane, row)
                slots = sorted(16 * (k // 16) + inv[k % 16] for k in ks)
                assert slots == list(range(slots[0], slots[0] + 8)) and slots[0] % 8 == 0, (warp, lane, row)
    assert len(seen) == bm * 128


def test_what_a_set_holds_is_read_again_after_an_add() -> None:
    """mma's check of a set's tiers is kept per build: a fine-tune added in groups of 64 makes the
    set one these kernels do not serve (the check must not answer from the earlier build)."""
    from deltastore.kernels import DeltaSet

    from .kernel_testlib import packed_delta

    ds = DeltaSet(128, [128])
    ds.add([packed_delta(128, 128, group_size=128, schedule=[[8, 1], [3, 2], [2, None]])[1]])
    assert mma._serves(ds)
    ds.add([packed_delta(128, 128, group_size=64, seed=1, schedule=[[8, 1], [3, 2], [2, None]])[1]])
    assert not mma._serves(ds)


def test_every_factors_words_start_16_byte_aligned() -> None:
    """What the wide loads of the mma kernels rely on (their hints are taken only where a tier's
    offset is a multiple of 4 words, but only then do they load 128 bits at a time): the DeltaSet
    pads its flat words buffer so that every factor starts on 16 bytes, and the padding changes no
    factor's words (each factor's view is still its own packed words)."""
    from deltastore.kernels import DeltaSet
    from deltastore.kernels.deltaset import F

    from .kernel_testlib import packed_delta

    ds = DeltaSet(300, [200, 72])
    deltas = []
    for s in range(3):
        pair = [packed_delta(m, 300, seed=s * 10 + i, schedule=[[8, 1], [3, 3], [2, None]])[1] for i, m in enumerate([200, 72])]
        deltas.append([[u.q.clone() for _v, u in d.tiers] + [v.q.clone() for v, _u in d.tiers] for d in pair])
        ds.add(pair)
    ds.build()
    offs = [rec[F[k]] for per in ds.records for recs in per for rec in recs for k in ("v_q", "u_q")]
    assert len(offs) == 3 * 2 * 3 * 2 and all(o % 4 == 0 for o in offs)
    packed = sum(q.numel() for pair in deltas for fac in pair for q in fac)
    assert ds.words.numel() > packed  # padding was needed (these shapes give factors of odd word counts)
    for s, per in enumerate(ds.records):
        for i, recs in enumerate(per):
            for j, rec in enumerate(recs):
                u = deltas[s][i][j].reshape(-1).to(torch.int32)
                assert torch.equal(ds.words[rec[F["u_q"]]:rec[F["u_q"]] + u.numel()].cpu(), u)


def _tables_delta(x: torch.Tensor, ds, ids: torch.Tensor, mma_rows: bool) -> torch.Tensor:  # noqa: ANN001
    """What the kernels compute from a set's tile and item tables, in torch: per tile row, x . V^ of
    its (virtual) rows times S summed into z column zcol + (r >> dsh); per item, those z columns back
    times U^ (``mma_rows``: the tensor-core kernels' tables, with dsh; else the GEMV kernels')."""
    from deltastore.kernels.deltaset import NF

    n, ms = ds.in_features, ds.out_features
    tiles, ntiles, _ = ds.tiles(64, mma=mma_rows)
    items, nitems, _ = ds.items(256, mma=mma_rows)

    def factor(q0: int, sz0: int, count: int, bits: int, gs: int, length: int) -> torch.Tensor:
        rw, g = quant.packed_words(length, bits), quant.n_groups(length, gs)
        q = quant.unpack(ds.words[q0 : q0 + count * rw].view(count, rw), bits, length)
        return quant.dequantize(q, ds.scales[sz0 : sz0 + count * g].view(count, g), ds.zeros[sz0 : sz0 + count * g].view(count, g), gs)

    y = torch.zeros(x.shape[0], sum(ms), dtype=torch.float64)
    for m, slot in enumerate(ids.tolist()):
        if slot < 0:
            continue
        z = torch.zeros(ds.zcols, dtype=torch.float64)
        for sl in range(len(ms)):
            for t in range(int(ntiles[slot, sl])):
                row = tiles[slot, sl, t].tolist()
                v_q, v_sz, _, _, s_off, bits, count, zcol, gs = row[:NF]
                dsh = row[NF] if mma_rows else 0
                r = torch.arange(count) >> dsh
                V = factor(v_q, v_sz, count, bits, gs, n).double()
                z.index_add_(0, zcol + r, (V @ x[m].double()) * ds.svals[s_off + r].double())
        for sl, col0 in enumerate(ds.col_offsets):
            for i in range(int(nitems[slot, sl])):
                row = items[slot, sl, i].tolist()
                u_q, u_sz, bits, count, zcol, gs = row[2:8]
                dsh = row[-1] if mma_rows else 0
                U = factor(u_q, u_sz, count, bits, gs, ms[sl]).double()
                y[m, col0 : col0 + ms[sl]] += z[zcol + (torch.arange(count) >> dsh)] @ U
    return y


def test_the_planes_of_3_and_8_bit_tiers_are_the_same_delta() -> None:
    """A set that keeps 2-bit planes of its 3- and 8-bit tiers (deltaset.planes_of, what the
    tensor-core kernels read on a GPU): its mma tables hold 2-bit rows only, and computed as the
    kernels compute them (z columns shared by a component's planes) give the delta of the tiers as
    stored within float64 rounding of the same sums (1e-9 relative); two fine-tunes, odd shapes,
    rows of the base alone (zero)."""
    from deltastore.kernels import DeltaSet

    from .kernel_testlib import packed_delta, rel

    n, ms = 300, [200, 72]
    sets = {}
    for planes in (True, False):
        ds = DeltaSet(n, ms)
        ds.planes = planes
        for s in range(2):
            ds.add([packed_delta(m, n, seed=40 + 10 * s + i, group_size=128, schedule=[[8, 1], [3, 3], [2, None]], alpha=0.25)[1]
                    for i, m in enumerate(ms)])
        sets[planes] = ds.build()
    assert sets[True].bit_widths == sets[False].bit_widths == {8, 3, 2}
    assert sets[True].mma_bit_widths == {2} and sets[False].mma_bit_widths == {8, 3, 2}
    # the planes sit beside the tiers as stored: 8 bits in 4 planes (as many words), 3 in 2 (4 bits for 3)
    from deltastore.kernels.deltaset import F

    recs = [(rec, ms[b]) for per in sets[False].records for b, rs in enumerate(per) for rec in rs if rec[F["bits"]] in (3, 8)]
    planes_words = sum(rec[F["count"]] * (4 if rec[F["bits"]] == 8 else 2) * 2 * (-(-n // 32) + -(-m // 32)) for rec, m in recs)
    extra = sets[True].words.numel() - sets[False].words.numel()
    assert abs(extra - planes_words) <= 3 * 2 * len(recs) * 2  # (each factor's start aligned to 4 words)
    ids = torch.tensor([0, 1, -1, 1, 0])
    x = torch.randn(5, n, generator=torch.Generator().manual_seed(2))
    want = _tables_delta(x, sets[False], ids, mma_rows=False)
    for planes in (True, False):
        got = _tables_delta(x, sets[planes], ids, mma_rows=True)
        assert rel(got, want) < 1e-9
        assert bool((got[2] == 0).all())
    assert want.abs().amax() > 0
    # a third fine-tune added: the set rebuilt, the planes of the first two made once (reused), still the same delta
    kept = {k: v[1] for k, v in sets[True]._plane_cache.items()}
    third = [packed_delta(m, n, seed=90 + i, group_size=128, schedule=[[8, 1], [3, 3], [2, None]], alpha=0.25)[1] for i, m in enumerate(ms)]
    for ds in sets.values():
        ds.add(third)
        ds.build()
    assert all(sets[True]._plane_cache[k][1] is p for k, p in kept.items())
    ids = torch.tensor([2, 0, 2, 1])
    x = x[:4]
    assert rel(_tables_delta(x, sets[True], ids, mma_rows=True), _tables_delta(x, sets[False], ids, mma_rows=False)) < 1e-9
