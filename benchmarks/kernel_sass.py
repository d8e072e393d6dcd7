"""Instructions per packed value in the GEMV kernels' inner loops, from their SASS (no GPU needed).

    PYTHONPATH=/tmp/tr36 .venv/bin/python benchmarks/kernel_sass.py [--fast 0,1] [--bits 2,3,8] [--dump DIR] [--split N] [--launch] [--flat] [--expand-split N]
    PYTHONPATH=/tmp/tr36 .venv/bin/python benchmarks/kernel_sass.py --lut     # kernels/lut.py's two kernels instead
    KERNEL_SASS_MODULE=deltastore.kernels.triton_ops_before ...   # another copy of the module (e.g. an old commit's)

Compiles ``_gemv_shrink_kernel`` and ``_gemv_expand_kernel`` for sm_90 with the installed Triton
(3.6 on the device: ``pip install --no-deps --target /tmp/tr36 triton==3.6.0``), one bit width a
kernel, at M = 1 (one row) and 4 rows, with the argument specializations a launch on the device
gets (pointers 16-byte aligned, K / strides multiples of 16, M = 1 a constant). The inner loop is
the backward branch whose body holds the most FFMA; its static instruction count over the packed
values one thread handles in one pass of it is the figure of merit (the ncu figure "issued
instructions x 32 / packed values" counts the same thing dynamically, plus prologue and tail).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # (last: ./kernels must not shadow HF's kernels)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import importlib  # noqa: E402

triton_ops = importlib.import_module(os.environ.get("KERNEL_SASS_MODULE", "deltastore.kernels.triton_ops"))

SIG_S = {"x_ptr": "*bf16", "z_ptr": "*fp32", "words_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*fp16", "svals_ptr": "*fp32",
         "tiles_ptr": "*i64", "ntiles_ptr": "*i32", "rows_ptr": "*i32", "blocks_ptr": "*i32", "o_ptr": "*fp32",
         "M": "i32", "K": "i32", "ZC": "i32", "n_slices": "i32", "T_max": "i32", "stride_xm": "i32", "one": "i32", "o_n": "i32", "s_known": "i32"}
SIG_E = {"z_ptr": "*fp32", "y_ptr": "*bf16", "part_ptr": "*fp32", "sem_ptr": "*i32", "words_ptr": "*i32", "scales_ptr": "*fp16",
         "zeros_ptr": "*fp16", "items_ptr": "*i64", "nitems_ptr": "*i32", "rows_ptr": "*i32", "blocks_ptr": "*i32",
         "mout_ptr": "*i32", "coloff_ptr": "*i32", "M": "i32", "ZC": "i32", "Ntot": "i32", "NB_max": "i32", "n_slices": "i32",
         "I_max": "i32", "stride_ym": "i32", "one": "i32", "s_known": "i32"}
DIV16 = ("K", "stride_xm", "Ntot", "stride_ym")


def compile_sass(fn, sig: dict, ce: dict, nw: int, ns: int, m_const: int | None) -> tuple[str, str]:
    """(SASS text, resource line) of ``fn`` compiled for sm_90."""
    sig = {n: sig.get(n, "constexpr") for n in fn.arg_names}
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items() if t.startswith("*") or n in DIV16}
    ce = {**{q.name: q.default for q in fn.params if q.is_constexpr and q.has_default}, **ce}  # unnamed: their defaults
    consts = {(names.index(n),): v for n, v in ce.items() if n in names}  # (kernels before FAST lack it)
    if m_const is not None:
        sig["M"] = "constexpr"
        consts[(names.index("M"),)] = m_const
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=nw, num_stages=ns))
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    path = f"/tmp/kernel_sass_{os.getpid()}.cubin"
    with open(path, "wb") as f:
        f.write(k.asm["cubin"])
    try:
        sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", path], capture_output=True, text=True).stdout
        res = subprocess.run([os.path.join(bindir, "cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    line = next((ln for ln in res.splitlines() if "REG:" in ln), "")
    return sass, " ".join(p for p in line.split() if p.split(":")[0] in ("REG", "STACK", "LOCAL"))


_INS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def loops(sass: str) -> list[tuple[int, int, collections.Counter]]:
    """(start, end, opcode counts) of every backward branch's body, in address order."""
    ins = []
    for m in _INS.finditer(sass):
        ins.append((int(m.group(1), 16), m.group(3), m.group(4)))
    out = []
    for addr, op, rest in ins:
        if op.startswith("BRA"):
            t = re.search(r"0x([0-9a-f]+)", rest)
            if t and int(t.group(1), 16) <= addr:
                lo = int(t.group(1), 16)
                body = collections.Counter(o.split(".")[0] for a, o, _ in ins if lo <= a <= addr)
                out.append((lo, addr, body))
    return out


def _inner(sass: str) -> tuple[int, int, collections.Counter] | None:
    """The inner loop's (start, end, opcode counts): the loop body with the most FFMA; among ties, the
    shortest (the innermost)."""
    cands = loops(sass)
    return max(cands, key=lambda c: (c[2]["FFMA"], -sum(c[2].values()))) if cands else None


def inner_loop(sass: str) -> collections.Counter:
    got = _inner(sass)
    return got[2] if got else collections.Counter()


def inner_loop_lines(sass: str) -> list[str]:
    """The inner loop's instructions, one ``address opcode operands`` line each (what --dump writes
    beside each kernel's SASS as NAME.loop.txt: where its instructions go, load by load)."""
    got = _inner(sass)
    if not got:
        return []
    return [f"{m.group(1)} {m.group(2) or ''}{m.group(3)} {m.group(4).strip()}" for m in _INS.finditer(sass) if got[0] <= int(m.group(1), 16) <= got[1]]


def launched(kind: str, bm: int, launch: bool, flat: bool, esplit: int | None = None) -> dict:
    """The constexprs a launch on the device adds (``launch``: the session-30 defaults, triton_ops.GEMV_KNOWN_SLOT
    and GEMV_Z_ATOMIC: the known slot's prologue, the shrink's splits summed into one z, so the expand reads z
    at SPLIT_K 1; ``flat``: GEMV_FLAT_WORDS, the expand's at one row a block only; ``esplit``: the expand's
    SPLIT_K instead, e.g. the split z's it read before GEMV_Z_ATOMIC)."""
    ce = {}
    if launch:
        ce = dict(KNOWN=True, ONE_ROW=bm == 1, FIELDS_FIRST=True, Z_ATOMIC=True) if kind == "shrink" else dict(KNOWN=True, ATOMIC=True, SPLIT_K=1)
    if esplit and kind == "expand":
        ce["SPLIT_K"] = esplit
    if flat and (kind == "shrink" or bm == 1):
        ce["FLAT"] = True
    return ce


def compile_gemv(kind: str, bm: int, fast: bool, has: dict, tr: int, er: int, nw: int, opts: argparse.Namespace) -> tuple[str, str]:
    """(SASS, resources) of the GEMV shrink or expand at ``bm`` rows a block with the tiers ``has``, the
    shrink's split ``opts.split`` and the launch's constexprs (:func:`launched`: opts.launch, flat, expand_split)."""
    if kind == "shrink":
        fn, sig, ce = triton_ops._gemv_shrink_kernel, SIG_S, dict(NFIELD=9, BLOCK_M=bm, BLOCK_R=tr, BLOCK_K=128)
    else:
        fn, sig, ce = triton_ops._gemv_expand_kernel, SIG_E, dict(NFI=11, BLOCK_M=bm, BLOCK_R=er, BLOCK_N=128)
    ce = {**ce, "SPLIT_K": opts.split, "FAST": fast, **has, **launched(kind, bm, opts.launch, opts.flat, opts.expand_split)}
    return compile_sass(fn, sig, ce, nw, 3, 1 if bm == 1 else None)


def report(fasts: list[bool], bit_list: list[int], dump: str | None, tr: int, er: int, nw: int, rows: list[int],
           opts: argparse.Namespace) -> None:
    print(f"triton {triton.__version__}, sm_90; FAST = triton_ops.GEMV_FAST (True: _unpack_c, False: _unpack_f)")
    print("| kernel | FAST | bits | rows (M) | warps | values a thread a pass | loop instructions | instr per value | FFMA | LDG | regs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, bits, bm, fast in ((k, b, m, f) for k in ("shrink", "expand") for b in bit_list for m in rows for f in fasts):
            if True:
                has = {f"HAS{b}": b == bits for b in (1, 2, 3, 4, 8)}
                sass, res = compile_gemv(kind, bm, fast, has, tr, er, nw, opts)
                if kind == "shrink":
                    per_pass = tr * 128 * (2 if bits == 3 else (8 // bits if bits < 8 else 1))
                else:
                    per_pass = (er if (bits <= 2) else (er // 2 if bits == 4 else er // 4)) * 128
                if dump:
                    os.makedirs(dump, exist_ok=True)
                    name = os.path.join(dump, f"{kind}_b{bits}_m{bm}_{'fast' if fast else 'old'}")
                    with open(name + ".sass", "w") as f:
                        f.write(sass)
                    with open(name + ".loop.txt", "w") as f:
                        f.write("\n".join(inner_loop_lines(sass)) + "\n")
                body = inner_loop(sass)
                n = sum(body.values())
                vt = per_pass / (nw * 32)
                print(f"| gemv {kind} | {fast} | {bits} | {bm} | {nw} | {vt:g} | {n} | {n / vt:.2f} | {body['FFMA']} | {body['LDG']} | {res} |", flush=True)
                top = ", ".join(f"{o} {c}" for o, c in body.most_common(8))
                print(f"|  |  |  |  |  |  | ({top}) |  |  |  |  |")


def combined(fasts: list[bool], tr: int, er: int, nw: int, rows: list[int], opts: argparse.Namespace) -> None:
    """Registers of the kernels as launched for a delta-come set at 1/16 (tiers of 8, 3 and 2 bits
    in one compile: the register bill is the largest branch's)."""
    print("| kernel | FAST | widths | rows (M) | regs |")
    print("|---|---|---|---|---|")
    has = {f"HAS{b}": b in (8, 3, 2) for b in (1, 2, 3, 4, 8)}
    for kind, bm, fast in ((k, m, f) for k in ("shrink", "expand") for m in rows for f in fasts):
        _, res = compile_gemv(kind, bm, fast, has, tr, er, nw, opts)
        print(f"| gemv {kind} | {fast} | 8, 3, 2 | {bm} | {res} |", flush=True)


def lut_report() -> None:
    """kernels/lut.py's kernels compiled as a launch compiles them (a compile error shows here, before a
    device call: the interpreter runs what the compiler refuses, such as a module global in a kernel): the
    lookup shrink at each group size (registers, its loop's instructions per 128-value pass) and the table."""
    lut = importlib.import_module("deltastore.kernels.lut")
    sig = {"t_ptr": "*fp32", "xw_ptr": "*fp32", "z_ptr": "*fp32", "vt_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*fp16",
           "svals_ptr": "*fp32", "tiles_ptr": "*i64", "ntiles_ptr": "*i32", "blocks_ptr": "*i32", "K": "i32", "n_slices": "i32",
           "T_max": "i32", "s_known": "i32"}
    for gs in (32, 64, 128):
        ce = dict(SPLIT=lut.MAX_SPLIT, BLOCK_R=lut.TILE_R, GS=gs, USE_GDC=True)
        sass, res = compile_sass(lut._lut_shrink_kernel, sig, ce, lut.WARPS, 3, None)
        body = max(loops(sass), key=lambda c: sum(c[2].values()))[2]
        per = gs * lut.TILE_R // (lut.WARPS * 32)  # values a thread takes a pass: its rows' group (one row at 64 rows, 2 warps)
        print(f"lookup shrink, groups of {gs}: {res}; loop {sum(body.values())} instructions for {per} values a thread; "
              f"{', '.join(f'{k} {v}' for k, v in body.most_common(6))}")
    sig_t = {"x_ptr": "*bf16", "t_ptr": "*fp32", "xw_ptr": "*fp32", "o_ptr": "*fp32", "K": "i32", "o_n": "i32"}
    _, res = compile_sass(lut._table_kernel, sig_t, dict(PAIRS=lut.TABLE_PAIRS, ZERO=1024), 4, 3, None)
    print(f"table (zeroing 1024 floats a program): {res}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", default="0,1", help="FAST values to compile (0 = old unpack, 1 = new), comma-separated")
    ap.add_argument("--bits", default="2,3,8", help="tier widths, comma-separated")
    ap.add_argument("--dump", default=None, help="write each kernel's SASS into this folder")
    ap.add_argument("--tile-r", type=int, default=triton_ops.GEMV_TILE_R, help="shrink components a program")
    ap.add_argument("--step-r", type=int, default=triton_ops.GEMV_STEP_R, help="expand components a step")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--rows", default="1,4", help="rows a block (BLOCK_M), comma-separated")
    ap.add_argument("--split", type=int, default=4, help="the shrink's split of the inputs (and the expand's z's, without --launch)")
    ap.add_argument("--launch", action="store_true", help="the constexprs a launch adds today (the known slot's prologue, the summed z)")
    ap.add_argument("--flat", action="store_true", help="with triton_ops.GEMV_FLAT_WORDS's loads")
    ap.add_argument("--expand-split", type=int, default=None, help="the expand's split z's (e.g. 8 with --launch: before the summed z)")
    ap.add_argument("--lut", action="store_true", help="kernels/lut.py's kernels instead (compile check and counts)")
    args = ap.parse_args()
    if args.lut:
        return lut_report()
    fasts, rows = [f == "1" for f in args.fast.split(",")], [int(r) for r in args.rows.split(",")]
    print(f"module {triton_ops.__name__}")
    print(f"split {args.split}, launch {args.launch}, flat {args.flat}, expand split {args.expand_split}")
    report(fasts, [int(b) for b in args.bits.split(",")], args.dump, args.tile_r, args.step_r, args.warps, rows, args)
    print()
    combined(fasts, args.tile_r, args.step_r, args.warps, rows, args)


if __name__ == "__main__":
    main()
