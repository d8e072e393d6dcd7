"""Python started in the checkout's root sees its source folders as top-level packages (the working
directory comes first on ``sys.path``), and ``kernels`` is also Hugging Face's package, which
transformers 5.25 and later imports as it loads. kernels/__init__.py hands that name over to the
installed package (or fails as for a missing module where none is installed): these run real
interpreters in the root, as a user does after cloning."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _hf_kernels() -> importlib.metadata.Distribution | None:
    """The installed distribution named ``kernels`` (Hugging Face's), or None."""
    try:
        return importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return None


def test_the_name_kernels_is_the_installed_package_and_ours_still_imports():
    r = _run("import kernels, deltastore.kernels as k; print(kernels.__file__); print(k.__file__); print(k.DeltaLinear.__name__)")
    dist = _hf_kernels()
    if dist is None:
        assert r.returncode != 0 and "No module named 'kernels'" in r.stderr, r.stderr
        return
    assert r.returncode == 0, r.stderr
    top, ours, name = r.stdout.split()
    installed = Path(dist.locate_file("kernels/__init__.py"))
    assert Path(top).resolve() == installed.resolve(), top  # the installed one, not ./kernels
    assert Path(ours).parent.name == "kernels" and Path(ours).resolve() != installed.resolve()
    assert name == "DeltaLinear"


def test_without_an_installed_kernels_the_name_is_missing_not_ours():
    r = _run("import kernels", "-S")  # -S: no site-packages, so nothing of that name is installed
    assert r.returncode != 0
    assert "ModuleNotFoundError: No module named 'kernels'" in r.stderr, r.stderr


def test_a_root_reached_through_a_symlink_is_still_left_out(tmp_path):
    """The checkout on sys.path twice, once through a symlink (PYTHONPATH): the folder is not found
    again as "the installed package" under its other path (that would run this file once more)."""
    link = tmp_path / "checkout"
    link.symlink_to(ROOT, target_is_directory=True)
    r = _run("import kernels", "-S", env={**os.environ, "PYTHONPATH": str(link)})
    assert r.returncode != 0
    assert "ModuleNotFoundError: No module named 'kernels'" in r.stderr, r.stderr[-2000:]


def test_transformers_imports_its_models_from_the_checkout_root():
    pytest.importorskip("transformers")
    r = _run("from transformers import LlamaForCausalLM; import deltastore.kernels; print(LlamaForCausalLM.__name__)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["LlamaForCausalLM"]
