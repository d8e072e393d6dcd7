"""One model serving a full fine-tune and its base row by row, on the CPU, against the two served apart.

    python benchmarks/bench_load_many_cpu.py --home DIR --ref NAME@vN [--base NAME] [--rounds 5] [--new 8]

A full fine-tune changes its norms and embedding too (the demo's ``smollm2-math@v1``: ``deltastore demo``
leaves it in ``.deltastore-demo/home``); ``lazy.load_many`` gives each row its own (kernels/slot_params.py).
Timed, alternating rounds in one process, medians: a batch of 2 rows (the fine-tune, the base) through
``load_many``'s model, against the same 2 prompts through ``lazy.load`` of each (one row each, one after the
other): a forward of the 10-token prompt, and ``generate`` of ``--new`` tokens. Also: what the per-row tensors
cost in memory (the stacked copies), and each row's logits against its model alone.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

PROMPT = [1, 504, 3094, 28, 2025, 17, 359, 253, 1524, 30]


def main() -> None:
    import deltastore
    from deltastore import lazy
    from deltastore.kernels.slot_params import SlotModule

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--base", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new", type=int, default=8)
    args = ap.parse_args()
    store = deltastore.open(args.home)
    base = args.base or store.resolve(args.ref).base.split("@")[0]
    many = lazy.load_many(store, [args.ref])
    apart = [lazy.load(store, args.ref), lazy.load(store, base)]
    ids = torch.tensor([PROMPT, PROMPT])
    rows = torch.tensor([0, -1])
    slots = [m for m in many.modules() if isinstance(m, SlotModule)]
    extra = sum(b.numel() * b.element_size() for m in slots for n, b in m.named_buffers(recurse=False) if n.startswith("stack_"))
    with torch.no_grad():
        mixed = many(input_ids=ids, delta_ids=rows).logits.float()
        alone = [m(input_ids=ids[:1]).logits.float() for m in apart]
    errs = [float((mixed[i : i + 1] - a).norm() / a.norm()) for i, a in enumerate(alone)]
    t = {"one model, 2 rows: forward": [], "two models, 1 row each: forward": [],
         "one model, 2 rows: generate": [], "two models, 1 row each: generate": []}
    kw = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, pad_token_id=0)
    for _ in range(args.rounds):
        with torch.no_grad():
            a = time.perf_counter()
            many(input_ids=ids, delta_ids=rows)
            t["one model, 2 rows: forward"].append(time.perf_counter() - a)
            a = time.perf_counter()
            for m in apart:
                m(input_ids=ids[:1])
            t["two models, 1 row each: forward"].append(time.perf_counter() - a)
        a = time.perf_counter()
        g1 = many.generate(ids, delta_ids=rows, **kw)
        t["one model, 2 rows: generate"].append(time.perf_counter() - a)
        a = time.perf_counter()
        g2 = [m.generate(ids[:1], **kw) for m in apart]
        t["two models, 1 row each: generate"].append(time.perf_counter() - a)
    same = [bool(torch.equal(g1[i : i + 1], g2[i])) for i in range(2)]
    print(f"# load_many on the CPU: {args.ref} and {base} row by row ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__})")
    print()
    print(f"`python benchmarks/bench_load_many_cpu.py --home {args.home} --ref {args.ref} --rounds {args.rounds} --new {args.new}`")
    print()
    print(f"{len(slots)} modules take their tensors per row; their stacked copies {extra / 1e6:.1f} MB for the one fine-tune "
          f"(the norms' stacks hold the base's row too). Each row against its model alone: rel err {errs[0]:.1e} (fine-tune), "
          f"{errs[1]:.1e} (base); greedy tokens equal: {same}.")
    print()
    print("| | median ms | rounds |")
    print("|---|---|---|")
    for k, v in t.items():
        print(f"| {k} | {statistics.median(v) * 1e3:.1f} | {' '.join(f'{x * 1e3:.0f}' for x in v)} |")


if __name__ == "__main__":
    main()
