"""The command line: the commands users type, one clear error line and a non-zero exit on bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import finetune_of, llama_like, tree_hashes, write_model


def run(home: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """Run the CLI in this process (the entry point's own code path, without paying for a new
    interpreter per command); ``run_subprocess`` checks the installed console script itself."""
    from deltastore.cli.main import main

    o, e = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            main(["--home", str(home), *args])
        except SystemExit as x:
            code = x.code if isinstance(x.code, int) else 1
    p = subprocess.CompletedProcess(args, code, o.getvalue(), e.getvalue())
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def run_subprocess(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DELTASTORE_HOME": str(home)}
    exe = Path(sys.executable).with_name("deltastore")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "deltastore.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    home = tmp / "home"
    base = llama_like(0)
    write_model(tmp / "base", base)
    write_model(tmp / "ft", finetune_of(base))
    run(home, "init")
    run(home, "add", "base", "llama", str(tmp / "base"), "-m", "the base", "--tag", "prod")
    run(home, "add", "finetune", "wizard", str(tmp / "ft"), "--base", "llama@prod", "--codec", "lossless")
    return home, tmp


def test_end_to_end_commands(cli_store) -> None:
    home, tmp = cli_store
    assert "wizard" in run(home, "ls").stdout
    models = json.loads(run(home, "ls", "--json").stdout)
    assert {m["name"] for m in models} == {"llama", "wizard"}
    log = json.loads(run(home, "log", "llama", "--json").stdout)
    assert log[0]["tags"] == ["prod"] and log[0]["message"] == "the base"
    show = json.loads(run(home, "show", "wizard@v1", "--json").stdout)
    assert show["version"]["base"] == "llama@v1"
    assert {t["source"] for t in show["tensors"]} == {"delta", "base"}
    assert show["ratio_whole"] > 1
    lin = json.loads(run(home, "lineage", "llama", "--json").stdout)
    assert lin["descendants"]["children"][0]["ref"] == "wizard@v1"
    assert "wizard@v1" in run(home, "lineage", "llama").stdout
    diffs = json.loads(run(home, "diff", "llama", "wizard", "--json").stdout)
    assert diffs and all(d["status"] == "changed" for d in diffs)
    assert all("norm" not in d["name"] for d in diffs)
    out = tmp / "out"
    run(home, "checkout", "wizard@latest", str(out))
    assert tree_hashes(out) == tree_hashes(tmp / "ft")
    assert json.loads(run(home, "verify", "--json").stdout)["ok"]
    du = json.loads(run(home, "du", "--json").stdout)
    assert du["versions"] == 2
    run(home, "tag", "wizard@v1", "good")
    assert json.loads(run(home, "show", "wizard@good", "--json").stdout)["version"]["number"] == 1
    assert "up to date" in run(home, "db", "upgrade").stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["checkout", "nope", "/tmp/x-never"], "no model named 'nope'"),
        (["checkout", "llama@v9", "/tmp/x-never"], "no version v9"),
        (["add", "base", "a/b", "/tmp"], "contains a slash"),
        (["add", "base", "m", "/definitely/not/here"], "no such file"),
        (["add", "finetune", "x", "{tmp}/base", "--base", "llama", "--codec", "nosuch"], "unknown codec 'nosuch'"),
        (["show", "llama@"], "nothing after '@'"),
    ],
)
def test_errors_are_one_line_and_nonzero(cli_store, args: list[str], words: str) -> None:
    home, tmp = cli_store
    before = run(home, "ls", "--json").stdout
    p = run(home, *[a.format(tmp=tmp) for a in args], ok=False)
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("deltastore: error:") and words in lines[0], lines[0]
    assert "Traceback" not in p.stderr
    assert run(home, "ls", "--json").stdout == before


def test_uninitialized_home_says_how(tmp_path: Path) -> None:
    p = run(tmp_path / "nothing", "ls", ok=False)
    assert p.returncode == 1 and "deltastore init" in p.stderr


def test_console_script_exit_code_and_one_line(cli_store) -> None:
    home, _ = cli_store
    p = run_subprocess(home, "checkout", "missing@v1", "/tmp/never-written")
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == ["deltastore: error: no model named 'missing'; models: llama, wizard"]
    p = run_subprocess(home, "ls", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)


def test_transformers_loads_checkout(tmp_path: Path) -> None:
    """A checkout is a Hugging Face directory that transformers loads unchanged."""
    transformers = pytest.importorskip("transformers")
    import torch

    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "m")
    home = tmp_path / "home"
    run(home, "init")
    run(home, "add", "base", "tiny", str(tmp_path / "m"))
    run(home, "checkout", "tiny", str(tmp_path / "out"))
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.bfloat16)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)


def test_lossy_add_with_alpha_and_calib_from_the_cli(tmp_path: Path) -> None:
    """The issue's command line: --codec delta-come --alpha 1/16 --calib FILE, then show."""
    from ..store.test_lossy import tiny_llama_dir

    b = tiny_llama_dir(tmp_path / "b", 0)
    f = tiny_llama_dir(tmp_path / "f", 1, base=b)
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(" ".join(f"w{(i * 5 + j) % 62}" for j in range(16)) for i in range(20)))
    home = tmp_path / "home"
    run(home, "init")
    run(home, "add", "base", "b", str(b))
    v = json.loads(run(home, "add", "finetune", "f", str(f), "--base", "b", "--codec", "delta-come",
                       "--alpha", "1/16", "--calib", str(calib), "--json").stdout)
    assert v["codec"] == "delta-come" and v["codec_params"]["alpha"] == 1 / 16 and v["calib_sha256"]
    text = run(home, "show", "f").stdout
    assert "linears-only ratio" in text and "delta-come" in text and "rel.err" in text
    p = run(home, "add", "finetune", "g", str(f), "--base", "b", "--alpha", "0", ok=False)
    assert p.returncode == 1 and "alpha" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_bad_files_from_the_cli(cli_store, tmp_path: Path) -> None:
    """Pickles, truncated files and the wrong base: one line each, exit 1, the store unchanged."""
    import pickle

    home, tmp = cli_store
    (tmp_path / "pk").mkdir()
    (tmp_path / "pk" / "pytorch_model.bin").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    trunc = write_model(tmp_path / "tr", llama_like(0))
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    other = write_model(tmp_path / "other", llama_like(0, hidden=32))
    cases = [
        (["add", "base", "p", str(tmp_path / "pk")], "never unpickles"),
        (["add", "base", "t", str(trunc)], "truncated"),
        (["add", "finetune", "w", str(other), "--base", "llama", "--codec", "lossless"], "not a fine-tune of llama@v1"),
        (["add", "base", "bad\x01name", str(tmp_path / "pk")], "control characters"),
    ]
    before = run(home, "ls", "--json").stdout
    objects = sorted(p.name for p in (home / "objects").rglob("*") if p.is_file())
    for args, words in cases:
        p = run(home, *args, ok=False)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 1 and len(lines) == 1 and words in lines[0], (args, p.stderr)
    assert run(home, "ls", "--json").stdout == before
    assert sorted(p.name for p in (home / "objects").rglob("*") if p.is_file()) == objects
