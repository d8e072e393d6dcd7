"""End to end: ``generate`` on a Llama-2-7B-shaped model serving N fine-tunes from one base.

    python benchmarks/bench_generate.py --out benchmarks/results/generate_h200.md     # on the GPU
    python benchmarks/bench_generate.py --smoke                                       # CPU check, tiny shapes

The model is transformers' LlamaForCausalLM with Llama-2-7B's shapes (hidden 4096, MLP 11008, 32
heads, vocabulary 32000, ``--layers`` decoder layers, 32 by default = the real 7B) and random bf16
weights made on the device (speed does not depend on the values). Its seven linears per layer
become :class:`~deltastore.kernels.DeltaLinear` modules, exactly as ``Store.load_many`` builds
them, each holding N random delta-come deltas at alpha 1/16 with the real codec's tier counts
(bench_kernels.random_packed); one batch holds one sequence per fine-tune (``delta_ids`` =
0 .. N-1, set on the model's DeltaContext as ``generate(delta_ids=...)`` does). Greedy decoding,
``--new`` tokens after a ``--prompt``-token prompt, each case twice: eager (transformers' generate,
its default KV cache) and under a CUDA graph (``deltastore.graph_decode``: static KV cache, each
decoding step one graph replay, what a lazy model's ``generate`` does on CUDA), with the GPU time
of one replay alone and, for the plain model and the first N, the GPU time of one step by kind of
kernel (torch.profiler).

Beside it: N materialized models (dense bf16 copies, one per fine-tune), each generating for its
own sequence, where N of them fit in the GPU; and the capacity: how many 1/16 fine-tunes fit in
the GPU beside the base and ``--kv-gb`` GB of KV cache (allocated for real next to the N = max
deltas, then the rest computed from the bytes per fine-tune measured here).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import emit, random_packed  # noqa: E402

from deltastore import graph_decode  # noqa: E402
from deltastore.kernels import DeltaContext, DeltaGroup, DeltaLinear, DeltaSet  # noqa: E402
from deltastore.kernels.linear import concat_rows  # noqa: E402

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def make_model(layers: int, device: torch.device, smoke: bool):
    """A Llama-2-7B-shaped LlamaForCausalLM (or a tiny one) with random bf16 weights on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if smoke:
        cfg = LlamaConfig(hidden_size=128, intermediate_size=352, num_attention_heads=4, num_key_value_heads=4,
                          num_hidden_layers=layers, vocab_size=512, max_position_embeddings=256)
    else:
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                          num_hidden_layers=layers, vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def to_lazy(model, ctx: DeltaContext, fuse: bool = True) -> list[tuple[DeltaSet, list[DeltaLinear]]]:
    """Swap every decoder linear for a DeltaLinear over the same (shared) weight, as load_many
    does: q/k/v and gate/up sharing one DeltaSet each (lazy.FUSED) unless ``fuse`` is off, their
    base weights copied into one tensor a group (kernels.concat_rows, as lazy.load loads them: one
    base GEMM a group; the plain model's separate tensors are dropped with the swapped modules).
    Returns the DeltaSets with their linears."""
    from deltastore.lazy import FUSED

    sets = []
    for layer in model.model.layers:
        for parent, names in (("self_attn", ("q_proj", "k_proj", "v_proj")), ("self_attn", ("o_proj",)),
                              ("mlp", ("gate_proj", "up_proj")), ("mlp", ("down_proj",))):
            owner = layer.get_submodule(parent)
            groups = [names] if (fuse and names in FUSED) else [(n,) for n in names]
            for g in groups:
                olds = [getattr(owner, n) for n in g]
                group = DeltaGroup(olds[0].in_features, [o.out_features for o in olds], olds[0].weight.device) if len(g) > 1 else None
                # a group's base weights as row slices of one tensor, as lazy.load lays them out (one base GEMM a group)
                ws = concat_rows([o.weight.data for o in olds]) if group is not None else [olds[0].weight.data]
                lins = [DeltaLinear(w, None if o.bias is None else o.bias.data, ctx, group=group, index=i)
                        for i, (o, w) in enumerate(zip(olds, ws))]
                for n, lin in zip(g, lins):
                    setattr(owner, n, lin)
                sets.append((group.deltas if group is not None else lins[0].deltas, lins))
    return sets


def add_finetunes(sets: list[tuple[DeltaSet, list[DeltaLinear]]], n: int, gen: torch.Generator, device: torch.device, alpha: float) -> None:
    """Give every DeltaSet ``n`` more random packed deltas, one per linear (one per new fine-tune)."""
    for ds, lins in sets:
        for _ in range(n):
            ds.add([random_packed(lin.out_features, lin.in_features, gen, device, alpha) for lin in lins])
        ds.build()


def add_whole(model, ctx: DeltaContext, have: int, n: int, gen: torch.Generator) -> list:
    """``--full``: fine-tunes ``have .. n-1`` also changed every norm, the embedding and the lm_head
    (as full fine-tunes do; lazy.load_many serves them through kernels/slot_params.SlotModule):
    the modules wrapped on first call, each new fine-tune given random tensors near the base's,
    the stacks rebuilt. Returns the SlotModules."""
    from deltastore.kernels.slot_params import SlotModule

    found = getattr(model, "_bench_slots", None)
    if found is None:
        found = []
        for name, mod in list(model.named_modules()):
            kind = ("embedding" if isinstance(mod, torch.nn.Embedding) else "linear" if name == "lm_head"
                    else "elementwise" if name.endswith("norm") else None)
            if kind is None:
                continue
            parent, _, leaf = name.rpartition(".")
            sm = SlotModule(mod, ctx, kind, ("weight",))
            setattr(model.get_submodule(parent) if parent else model, leaf, sm)
            found.append(sm)
        model._bench_slots = found
    for sm in found:
        b = sm.base("weight")
        for slot in range(have, n):
            noise = torch.randn(b.shape, generator=gen, device=b.device, dtype=torch.float32)
            sm.set(slot, "weight", (b.float() + 0.01 * b.float().abs().mean() * noise).to(b.dtype))
        sm.rebuild(n)
    return found


def gen_tokens(model, batch: int, prompt: int, new: int, vocab: int, device: torch.device, graph: bool = False,
               first: list | None = None) -> tuple[float, torch.Tensor, float]:
    """(seconds, tokens, warm-up seconds) of one greedy generate of ``new`` tokens for ``batch``
    sequences after a 4-token warm-up (which, with ``graph``, also captures the decoding step:
    the timed call only replays it). ``graph``: graph_decode.generate (static KV cache, each
    decoding step one CUDA graph replay); else transformers' eager generate, default cache.
    ``first``: appended with the seconds of a one-token generate after the timed one (the eager
    prefill and the first token: what a user waits before the first token; median of 3)."""
    ids = torch.randint(3, vocab, (batch, prompt), generator=torch.Generator().manual_seed(batch)).to(device)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)

    def run(**k):
        if graph:
            return decoder(model, device).generate(model.generate, ids, cuda_graph=True, **k)
        return model.generate(ids, **k)

    t = time.perf_counter()
    run(**{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
    sync(device)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    out = run(**kw)
    sync(device)
    took = time.perf_counter() - t
    if first is not None:
        ts = []
        for _ in range(3):
            t1 = time.perf_counter()
            run(**{**kw, "max_new_tokens": 1, "min_new_tokens": 1})
            sync(device)
            ts.append(time.perf_counter() - t1)
        first.append(sorted(ts)[1])
    return took, out, warm


def decoder(model, device: torch.device) -> graph_decode.GraphDecoder:
    """The model's GraphDecoder; on the CPU (--smoke) the same path with eager steps (capture=False)."""
    return graph_decode.decoder_of(model, capture=device.type == "cuda")


def step_ms(model, device: torch.device, reps: int = 8) -> float:
    """GPU milliseconds of one replay of the captured decoding step (no host work between replays:
    what a token costs the GPU). Replays advance the KV cache past the generated tokens, inside
    its length bucket; the next generate resets it."""
    g = decoder(model, device)._graph
    if g is None or g.graph is None or device.type != "cuda":
        return float("nan")
    g.graph.replay()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        g.graph.replay()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


CATEGORIES = (("delta shrink", ("shrink",)), ("delta expand", ("expand",)),
              ("attention", ("flash", "fmha", "attention", "sdpa", "efficient")),
              ("GEMM (base linears, lm_head)", ("gemm", "gemv", "nvjet", "cutlass", "sm90", "xmma", "cublas", "ampere")))


def kernel_breakdown(model, device: torch.device) -> dict[str, float]:
    """GPU ms of one decoding step by kind of kernel (torch.profiler over the captured step's
    inputs run once eagerly: the same kernels the graph replays)."""
    dec = decoder(model, device)
    g = dec._graph
    if g is None or device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    try:
        with dec._ids_ctx(dec._context()), profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(**g.static)
            sync(device)
    except Exception as e:  # noqa: BLE001 - a profiler that cannot run here costs the breakdown, not the benchmark
        return {"error": f"{type(e).__name__}: {e}"[:200]}
    out: dict[str, float] = {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = e.name.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")
        out[cat] = out.get(cat, 0.0) + e.time_range.elapsed_us() / 1e3
    out["total"] = sum(out.values())
    return {k: round(v, 3) for k, v in out.items()}


def prefill_profile(model, batch: int, prompt: int, vocab: int, device: torch.device) -> None:
    """Print torch.profiler's table (CPU and GPU time by op, top 30 by CPU time) of one one-token
    generate through the graph decoder (the eager prefill a user waits for before the first token),
    then cProfile's of another (Python functions by own and by cumulative time)."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(3, vocab, (batch, prompt), generator=torch.Generator().manual_seed(batch)).to(device)
    kw = dict(max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=0)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        decoder(model, device).generate(model.generate, ids, cuda_graph=device.type == "cuda", **kw)
        sync(device)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30), flush=True)
    # the host's Python by function (the profiler above sees aten ops only): where the eager prefill's CPU goes
    import cProfile
    import io
    import pstats

    cp = cProfile.Profile()
    cp.enable()
    decoder(model, device).generate(model.generate, ids, cuda_graph=device.type == "cuda", **kw)
    sync(device)
    cp.disable()
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(cp, stream=buf).sort_stats(key).print_stats(45)
        print(f"cProfile of one one-token generate, by {key}:", buf.getvalue()[-9000:], sep="\n", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def mem_gb(device: torch.device) -> float:
    return torch.cuda.memory_allocated() / 1e9 if device.type == "cuda" else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--ns", default="1,8,32,128", help="numbers of fine-tunes served at once")
    ap.add_argument("--eager-ns", default="1,8,32,128", help="of those, the ones also timed with eager decoding")
    ap.add_argument("--dense-ns", default="1,8", help="numbers of materialized models to compare (where they fit)")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--kv-gb", type=float, default=10.0)
    ap.add_argument("--alpha", type=float, default=1 / 16)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds after which no further case starts")
    ap.add_argument("--full", action="store_true",
                    help="the fine-tunes also change every norm, the embedding and the lm_head (per-row tensors, kernels/slot_params.py)")
    ap.add_argument("--prefill-profile", action="store_true",
                    help="for the first N: torch.profiler's CPU and GPU table of one one-token generate (where the first token's time goes)")
    ap.add_argument("--no-fuse", action="store_true", help="one DeltaSet per linear (as commit db384d5 measured), not per q/k/v and gate/up")
    args = ap.parse_args()
    t_end = time.time() + args.deadline
    device = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        args.layers, args.new, args.prompt = min(args.layers, 2), min(args.new, 5), min(args.prompt, 5)
        args.ns, args.eager_ns, args.dense_ns = "1,3", "1,3", "1,2"
    ns = [int(v) for v in args.ns.split(",")]
    eager_ns = {int(v) for v in args.eager_ns.split(",") if v}
    dense_ns = [int(v) for v in args.dense_ns.split(",") if v]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    total = torch.cuda.get_device_properties(device).total_memory / 1e9 if device.type == "cuda" else float("nan")
    rows: list[dict] = []
    breakdown: dict[str, dict] = {}

    def case(label: str, model, n: int, batch: int, graph: bool, **extra) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = dict(decoder(model, device).stats)
        first: list[float] = []
        t, out, warm = gen_tokens(model, batch, args.prompt, args.new, vocab, device, graph=graph, first=first)
        st = {k: v - before.get(k, 0) for k, v in decoder(model, device).stats.items()}
        r = dict(case=label, n=n, batch=batch, decode=mode_name(graph, device), s=t, tok_s=batch * args.new / t,
                 ms_token=1e3 * t / args.new, first_ms=1e3 * first[0], warm_s=warm, mem_gb=mem_gb(device),
                 peak_gb=peak_gb(device), **extra)
        if graph:
            r["step_ms"] = step_ms(model, device)
            r["replays"], r["captures"], r["eager_steps"] = st["replays"], st["captures"], st["eager_steps"]
        rows.append(r)
        print(json.dumps(r), flush=True)
        return out

    t0 = time.time()
    model = make_model(args.layers, device, args.smoke)
    vocab = model.config.vocab_size
    base_gb = mem_gb(device)
    ctx = DeltaContext(0, default_id=None)
    gen_tokens(model, 1, args.prompt, args.new, vocab, device)  # first-call costs (allocator, cuBLAS, HF caches) out of the figures
    print(f"setup {time.time() - t0:.0f} s", flush=True)
    plain_eager = case("plain model (base alone)", model, 0, 1, False)
    plain_graph = case("plain model (base alone)", model, 0, 1, True)
    breakdown["plain model"] = kernel_breakdown(model, device)
    same_plain = bool(torch.equal(plain_eager, plain_graph))
    decoder(model, device).release()
    lins = to_lazy(model, ctx, fuse=not args.no_fuse)
    gen = torch.Generator(device=device).manual_seed(1)
    have = 0
    per_ft_bytes = None
    agree: dict[int, str] = {}
    for n in ns:
        if time.time() > t_end:
            print(f"(deadline: N={n} not run)", flush=True)
            break
        t1 = time.time()
        add_finetunes(lins, n - have, gen, device, args.alpha)
        if args.full:
            add_whole(model, ctx, have, n, gen)
        have = n
        ctx.n_slots = n
        delta_bytes = sum(ds.nbytes for ds, _ in lins) + sum(
            b.numel() * b.element_size() for sm in getattr(model, "_bench_slots", []) for k, b in sm.named_buffers(recurse=False)
            if k.startswith("stack_"))
        per_ft_bytes = delta_bytes / n
        build_s = time.time() - t1
        ctx.set(torch.arange(n))
        label = f"lazy, {n} fine-tune(s), one sequence each"
        g_out = case(label, model, n, n, True, deltas_gb=delta_bytes / 1e9, build_s=build_s)
        if n == ns[0]:
            breakdown[f"lazy, {n} fine-tune(s)"] = kernel_breakdown(model, device)
            if args.prefill_profile:
                prefill_profile(model, n, args.prompt, vocab, device)
        decoder(model, device).release()
        if n in eager_ns and time.time() < t_end:
            e_out = case(label, model, n, n, False, deltas_gb=delta_bytes / 1e9)
            agree[n] = f"{sum(torch.equal(a, b) for a, b in zip(g_out, e_out))} of {n}"
        ctx.set(None)
    # capacity: the KV cache allocated for real beside the base and every delta loaded above
    cap = {}
    if device.type == "cuda" and per_ft_bytes:
        try:
            kv = torch.empty(int(args.kv_gb * 1e9), dtype=torch.uint8, device=device)
            free, _ = torch.cuda.mem_get_info()
            cap = dict(loaded=have, kv_gb=args.kv_gb, free_gb=free / 1e9, per_ft_gb=per_ft_bytes / 1e9,
                       more=int(max(free - 2e9, 0) // per_ft_bytes), held_gb=mem_gb(device))
            del kv
        except torch.OutOfMemoryError as e:
            cap = dict(loaded=have, kv_gb=args.kv_gb, error=str(e).splitlines()[0])
        print(json.dumps(cap), flush=True)
    del lins, model, ctx
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # N materialized models, each generating for its own sequence, one after another
    for n in dense_ns:
        if time.time() > t_end:
            print(f"(deadline: dense N={n} not run)", flush=True)
            break
        need = n * base_gb
        if device.type == "cuda" and need > 0.9 * total:
            rows.append(dict(case=f"{n} materialized models", n=n, skipped=f"needs {need:.0f} GB of {total:.0f}"))
            continue
        models = [make_model(args.layers, device, args.smoke) for _ in range(n)]
        held = mem_gb(device)
        for graph in (False, True):
            ts = [gen_tokens(m, 1, args.prompt, args.new, vocab, device, graph=graph)[0] for m in models]
            rows.append(dict(case=f"{n} materialized model(s), one sequence each, taking turns", n=n, batch=1,
                             decode=mode_name(graph, device), s=sum(ts), tok_s=n * args.new / sum(ts),
                             ms_token=1e3 * sum(ts) / (n * args.new), mem_gb=held, peak_gb=peak_gb(device)))
            print(json.dumps(rows[-1]), flush=True)
        for m in models:
            decoder(m, device).release()
        del models
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    lines = [f"# generate on a Llama-2-7B-shaped model, N fine-tunes from one base ({name})", "",
             f"Measured by `python benchmarks/bench_generate.py {' '.join(sys.argv[1:])}` on {name} "
             f"(torch {torch.__version__}, transformers {transformers_version()}, {total:.0f} GB). {args.layers} decoder layers of "
             f"Llama-2-7B's shapes, random bf16 weights, delta-come deltas at alpha {args.alpha:.4g} on all seven linears of every "
             f"layer ({'one DeltaSet per linear' if args.no_fuse else 'q/k/v and gate/up fused: one DeltaSet each'})"
             f"{'; every fine-tune also changed every norm, the embedding and the lm_head (per-row tensors, --full; in the packed deltas column)' if args.full else ''}; greedy, prompt "
             f"{args.prompt} tokens, {args.new} new tokens per sequence (timed after a 4-token warm-up that also captures the graph); "
             "one sequence per fine-tune. eager = transformers' generate, default cache; CUDA graph = graph_decode (static KV cache, "
             "each decoding step one graph replay). step ms = GPU time of one replay alone. GPU memory = torch.cuda.memory_allocated "
             "after the run; peak = max_memory_allocated during it. first token ms = a one-token generate after the timed one (prefill, "
             "eager, and the first token; median of 3).", "",
             "| case | decode | batch | seconds | tokens/s | ms/token | first token ms | step ms (GPU) | GPU memory (GB) | peak (GB) | of it: packed deltas (GB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['case']} | - | - | - | - | - | - | - | {r['skipped']} | - | - |")
            continue
        lines.append(f"| {r['case']} | {r['decode']} | {r['batch']} | {r['s']:.2f} | {r['tok_s']:.1f} | {r['ms_token']:.1f} | "
                     f"{r.get('first_ms', float('nan')):.1f} | {r.get('step_ms', float('nan')):.1f} | {r['mem_gb']:.1f} | {r['peak_gb']:.1f} | {r.get('deltas_gb', 0):.2f} |")
    lines += ["", f"Same greedy tokens, CUDA graph vs eager: plain model {same_plain}; lazy: "
              + ", ".join(f"N={n}: {v} sequences" for n, v in agree.items())]
    lines += ["", "GPU ms of one decoding step by kernel kind (torch.profiler, batch of the case): "
              + "; ".join(f"{k}: {json.dumps(v)}" for k, v in breakdown.items())]
    if cap:
        lines += ["", "Capacity: " + json.dumps(cap)]
    emit("\n".join(lines) + "\n", args.out, args.json, dict(rows=rows, capacity=cap, breakdown=breakdown, agree=agree, same_plain=same_plain))


def mode_name(graph: bool, device: torch.device) -> str:
    if not graph:
        return "eager"
    return "CUDA graph" if device.type == "cuda" else "static cache, eager steps"


def peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else float("nan")


def transformers_version() -> str:
    import transformers

    return transformers.__version__


if __name__ == "__main__":
    sys.exit(main())
