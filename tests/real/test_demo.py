"""The whole demo on real SmolLM2 weights, cut short (2 fine-tune steps, 8 held-out problems)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gguf")


@pytest.mark.slow
def test_demo_measures_every_version(tmp_path: Path) -> None:
    from deltastore.demo import run_demo

    said: list[str] = []
    report = run_demo(tmp_path / "demo", steps=2, heldout=8, accuracy=False, say=said.append)
    rows = {r["label"]: r for r in report["rows"]}
    assert list(rows) == ["base", "fine-tune", "smollm2-math-exact@v1", "smollm2-math@v1"]
    nll = {k: r["scores"]["answer_nll"] for k, r in rows.items()}
    # the lossless checkout is the fine-tune's bytes, so it scores exactly the same
    assert nll["smollm2-math-exact@v1"] == nll["fine-tune"]
    assert all(r["scores"]["n"] == 8 and r["scores"]["accuracy"] is None for r in rows.values())
    # bytes beside each: the lossy version costs less than the lossless one, which costs less than the files
    assert rows["smollm2-math@v1"]["bytes"] < rows["smollm2-math-exact@v1"]["bytes"] < rows["fine-tune"]["bytes"]
    assert len(report["verdicts"]) == 2 and report["verdicts"][0].startswith("lossless: kept 100% of the fine-tune's gain")
    assert any("delta-come: kept" in line for line in said)
    md = (tmp_path / "demo" / "report.md").read_text()
    assert "load average" in md.lower() and "delta-come: kept" in md
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["heldout_problems"] == 8
    # a second run starts a fresh store in the same workdir (versions are v1 again)
    again = run_demo(tmp_path / "demo", steps=2, heldout=2, accuracy=False, say=lambda s: None)
    assert again["versions"]["lossy"]["number"] == 1


def test_demo_refuses_a_workdir_it_did_not_make(tmp_path: Path) -> None:
    from deltastore.demo import run_demo
    from deltastore.errors import BadInputError

    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(BadInputError, match="not made by 'deltastore demo'"):
        run_demo(tmp_path, say=lambda s: None)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_demo_end_to_end_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step of the demo (fine-tune, three adds, two checkouts, four scorings) on a tiny Llama."""
    import torch

    monkeypatch.setenv("DELTASTORE_CACHE", str(tmp_path / "cache"))  # the fine-tune is cached there

    from deltastore.demo import run_demo
    from deltastore.zoo.tiny import tiny_llama_dir

    base = tiny_llama_dir(tmp_path / "tiny", dtype=torch.bfloat16, tokenizer=True, max_positions=512,
                          hidden=128, intermediate=256)
    recipe = {"steps": 6, "batch_size": 4, "seq_len": 512, "lr": 3e-3}
    report = run_demo(tmp_path / "demo", base=base, recipe=recipe, heldout=6, accuracy=True, say=lambda s: None)
    rows = {r["label"]: r for r in report["rows"]}
    assert list(rows) == ["base", "fine-tune", "demo-math-exact@v1", "demo-math@v1"]
    nll = {k: r["scores"]["answer_nll"] for k, r in rows.items()}
    assert nll["fine-tune"] < nll["base"] - 0.3
    assert nll["demo-math-exact@v1"] == nll["fine-tune"]
    assert rows["demo-math-exact@v1"]["scores"]["gain_kept"] == 1.0
    assert 0.5 < rows["demo-math@v1"]["scores"]["gain_kept"] <= 1.2
    assert report["verdicts"][0].startswith("lossless: kept 100% of the fine-tune's gain in 1/")
    assert report["verdicts"][1].startswith("delta-come: kept ")
    assert report["trained_here"] and report["train"]["steps"] == 6
    md = (tmp_path / "demo" / "report.md").read_text()
    assert report["verdicts"][1] in md
