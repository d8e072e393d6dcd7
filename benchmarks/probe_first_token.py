"""Probe (issue 9): a lazy model's first token (the eager prefill a user waits for), variants A/B'd in
one process, alternating rounds: the defaults; the tensor-core kernels' Gluon layouts built on every
call (as before the twenty-third session cached them); the side stream on (DELTASTORE_DELTA_STREAM=1,
the eager default before that session: deltas beside the base); off (=0, one stream); the Triton base
GEMV without the side stream (before that session; now cuBLAS's base unless the deltas run beside it). bench_generate's model (32 layers of Llama-2-7B's shapes,
random weights, q/k/v and gate/up grouped with one base tensor each), 1 fine-tune at 1/16.

    python benchmarks/probe_first_token.py [--layers 32] [--rounds 7] [--prompt 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_generate import add_finetunes, decoder, make_model, sync, to_lazy  # noqa: E402
from bench_kernels import emit  # noqa: E402

from deltastore.kernels import DeltaContext, linear, mma  # noqa: E402


def variants() -> dict[str, tuple]:
    """name -> (enter, leave): callables that switch a variant on and back off."""
    cached = (mma.compact_layouts, mma.expand_layouts)

    def uncached_on() -> None:
        mma.compact_layouts, mma.expand_layouts = (f.__wrapped__ for f in cached)

    def uncached_off() -> None:
        mma.compact_layouts, mma.expand_layouts = cached

    def env(value: str | None):  # noqa: ANN202
        def on() -> None:
            os.environ["DELTASTORE_DELTA_STREAM"] = value

        def off() -> None:
            os.environ.pop("DELTASTORE_DELTA_STREAM", None)

        return on, off

    here = linear._triton_base_here

    def triton_base_on() -> None:
        linear._triton_base_here = lambda: True

    def triton_base_off() -> None:
        linear._triton_base_here = here

    return {"defaults": (lambda: None, lambda: None), "layouts built per call (before)": (uncached_on, uncached_off),
            "side stream on (DELTASTORE_DELTA_STREAM=1)": env("1"), "side stream off (=0)": env("0"),
            "Triton base without the side stream (before)": (triton_base_on, triton_base_off)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = device.type != "cuda"
    layers = 2 if smoke else args.layers
    model = make_model(layers, device, smoke)
    ctx = DeltaContext(0, default_id=None)
    lins = to_lazy(model, ctx)
    add_finetunes(lins, 1, torch.Generator(device=device).manual_seed(1), device, 1 / 16)
    ctx.n_slots = 1
    ctx.set(torch.arange(1))
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1)).to(device)
    kw = dict(max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=0)

    def first() -> float:
        t = time.perf_counter()
        decoder(model, device).generate(model.generate, ids, cuda_graph=device.type == "cuda", **kw)
        sync(device)
        return 1e3 * (time.perf_counter() - t)

    vs = variants()
    for on, off in vs.values():  # compile and warm every variant first
        on()
        first()
        first()
        off()
    ms: dict[str, list[float]] = {k: [] for k in vs}
    for _ in range(args.rounds):
        for k, (on, off) in vs.items():
            on()
            ms[k].append(first())
            off()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    lines = [f"# {__doc__.splitlines()[0]}", "", f"`python benchmarks/probe_first_token.py --layers {layers} --rounds {args.rounds} "
             f"--prompt {args.prompt}` on {name}{' (tiny shapes)' if smoke else ''}; ms of a one-token generate (prefill + first token), {args.rounds} alternating rounds.",
             "", "| variant | median ms | min | max |", "|---|---|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.1f} | {min(v):.1f} | {max(v):.1f} |" for k, v in ms.items()]
    emit("\n".join(lines) + "\n", args.out, None, ms)


if __name__ == "__main__":
    main()
