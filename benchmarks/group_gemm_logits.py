"""A lazy tiny Llama's logits through DeltaGroup's one-GEMM path (this checkout) against the same
model through the DeltaGroup.output of an earlier commit (separate base GEMMs, float32 group delta
added to each member's output), and both against the materialized fine-tune.

    python benchmarks/group_gemm_logits.py [--before 6df98d6] [--device cuda] [--preference triton]

The earlier output method is read from ``git show BEFORE:kernels/linear.py`` and bound to the
groups of the same loaded model (same weights, same deltas): only how the group computes differs.
Prints relative Frobenius differences of the logits (one fine-tune; a mixed batch of 2 fine-tunes
and the base).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # (last: ./kernels must not shadow HF's kernels package)


def old_group_output(commit: str):
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:kernels/linear.py"], check=True, capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("deltastore.kernels._linear_before", f.name)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.DeltaGroup.output


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="6df98d6")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preference", default="auto")
    args = ap.parse_args()
    import deltastore
    from deltastore import lazy
    from deltastore.kernels import DeltaGroup
    from deltastore.kernels.linear import rows_view
    from deltastore.zoo.tiny import tiny_llama_dir
    from tests.kernels.test_lazy import HIDDEN, PROMPTS, finetune_linears

    old = old_group_output(args.before)
    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        base = tiny_llama_dir(d / "base", hidden=HIDDEN, layers=2, seed=0, random_norms=True)
        store = deltastore.open(d / "home")
        store.add_base("base", base)
        for i in (1, 2):
            store.add_finetune(f"ft{i}", finetune_linears(base, d / f"ft{i}", seed=i), base="base")

        def logits(model, **kw):
            with torch.no_grad():
                return model(input_ids=PROMPTS.to(dev), **kw).logits.float()

        def both(model, **kw):
            groups = {id(m.group): m.group for m in model.modules() if getattr(m, "group", None) is not None}
            q = model.model.layers[0].self_attn
            one = rows_view([q.q_proj.weight, q.k_proj.weight, q.v_proj.weight]) is not None
            new = logits(model, **kw)
            for g in groups.values():
                g.output = types.MethodType(old, g)
            before = logits(model, **kw)
            for g in groups.values():
                del g.output
            assert all(type(g) is DeltaGroup for g in groups.values())
            return new, before, one, len(groups)

        lz = lazy.load(store, "ft1", device=dev, preference=args.preference)
        full = lazy.load(store, "ft1", device=dev, lazy=False)
        new, before, one, ng = both(lz)
        mat = logits(full)
        print(f"device {dev}, preference {args.preference}, before = {args.before}; {ng} groups, q/k/v weights one tensor: {one}")
        print(f"one fine-tune: rel(new, before) {rel(new, before):.2e}; rel(new, materialized) {rel(new, mat):.2e}; "
              f"rel(before, materialized) {rel(before, mat):.2e}")
        many = lazy.load_many(store, ["ft1", "ft2"], device=dev, preference=args.preference)
        new, before, _, _ = both(many, delta_ids=torch.tensor([1, -1, 0]))
        print(f"mixed batch (ft2, base, ft1): rel(new, before) {rel(new, before):.2e}")
        store.close()


if __name__ == "__main__":
    main()
