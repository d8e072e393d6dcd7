"""A real FUSE mount of a small store, shared by the tests of this folder.

The store holds a tiny Llama base (lossless, tagged ``prod``), a delta-come fine-tune of it, a
lossless fine-tune, a 16 MiB multi-chunk model for the memory and ranged-read tests and a small
model whose objects a test corrupts. The mount is ``deltastore mount --foreground`` in a child
process, as users run it; the finalizer always unmounts it (lazily if a test left it busy) and
stops the child. Everything is skipped, with the reason, where FUSE cannot work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import deltastore
from deltastore.zoo._hfdir import write_sharded
from deltastore.zoo.tiny import tiny_finetune, tiny_llama_dir

CACHE_BYTES = 8 << 20


def fuse_skip_reason() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    from deltastore.mount import fuse_missing

    return fuse_missing()


@dataclass
class Mounted:
    home: Path
    mp: Path
    log: Path
    proc: subprocess.Popen
    src: dict[str, Path]  # model name -> the directory that was added

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def big_model(d: Path, seed: int) -> Path:
    """16 MiB of fp32 noise in 4 tensors that span several 4 MiB object chunks each."""
    g = torch.Generator().manual_seed(seed)
    sd = {f"w{i}": torch.randn(1 << 20, generator=g) for i in range(4)}
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "blob"}')
    write_sharded(sd, d, 1)
    return d


def start_mount(home: Path, mp: Path, log: Path, *extra: str) -> subprocess.Popen:
    mp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DELTASTORE_HOME": str(home), "DELTASTORE_LOG_LEVEL": "INFO"}
    with open(log, "ab") as lf:
        proc = subprocess.Popen([sys.executable, "-m", "deltastore.cli", "mount", str(mp), "--foreground",
                                 "--cache-size", str(CACHE_BYTES), "--ttl", "0.5", *extra],
                                stdout=lf, stderr=lf, env=env, start_new_session=True)
    deadline = time.monotonic() + 180
    while not os.path.ismount(mp):
        if proc.poll() is not None:
            pytest.fail(f"mount exited ({proc.returncode}): {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mount did not come up in 180 s")
        time.sleep(0.05)
    return proc


def stop_mount(mp: Path, proc: subprocess.Popen) -> None:
    if os.path.ismount(mp):
        r = subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="package")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Mounted:
    why = fuse_skip_reason()
    if why:
        pytest.skip(f"FUSE mount tests need FUSE: {why}")
    root = tmp_path_factory.mktemp("mount")
    src = {
        "tiny": tiny_llama_dir(root / "tiny", tokenizer=True, seed=0),
        "big": big_model(root / "big", seed=3),
        "fragile": tiny_llama_dir(root / "fragile", seed=7, hidden=32, layers=1),
    }
    src["tiny-ft"] = tiny_finetune(src["tiny"], root / "tiny-ft", seed=1, scale=5e-3)
    src["tiny-ftl"] = tiny_finetune(src["tiny"], root / "tiny-ftl", seed=2, scale=5e-3)
    home = root / "home"
    with deltastore.open(home) as st:
        st.add_base("tiny", src["tiny"], tags=["prod"])
        st.add_finetune("tiny-ft", src["tiny-ft"], "tiny")  # delta-come
        st.add_finetune("tiny-ftl", src["tiny-ftl"], "tiny", codec="lossless")
        st.add_base("big", src["big"])
        st.add_base("fragile", src["fragile"])
    mp, log = root / "mnt", root / "mount.log"
    proc = start_mount(home, mp, log)
    m = Mounted(home, mp, log, proc, src)
    yield m
    stop_mount(mp, proc)
