"""Real processes: a push killed with SIGKILL midway resumes and completes; two processes pushing
different versions of one NAME at once both land, with distinct numbers. On a local remote and on
SeaweedFS S3 (where the version records are created with If-None-Match)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import deltastore
from deltastore.transfer import RecordsSide
from deltastore.backend import Backend
from deltastore.objects import ObjectDB

from ..conftest import tree_hashes

pytestmark = pytest.mark.slow  # each starts Python processes that import torch
ROOT = Path(__file__).resolve().parents[2]


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.remotes.pusher", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _remote_url(kind: str, tmp_path: Path, request) -> str:
    if kind == "local":
        return str(tmp_path / "remote")
    request.getfixturevalue("s3")
    return f"s3://deltastore/{request.node.name.replace('[', '-').replace(']', '')}"


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_killed_push_resumes(kind, filled, models, tmp_path: Path, request) -> None:
    url = _remote_url(kind, tmp_path, request)
    remote = Backend(url)
    total = len(filled.manifest("f").object_ids() | filled.manifest("b").object_ids()) + 2
    p = _spawn(str(filled.config.home), "f@best", url, "--slow", "0.2")
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(ObjectDB(remote).all_oids()) >= 5 or p.poll() is not None:
            break
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    there = len(ObjectDB(remote).all_oids())  # not counting temp files the kill left
    assert 5 <= there < total
    assert RecordsSide(remote, "r").refs() == []  # nothing visible: the versions were not all there

    time.sleep(1.0)  # S3: a PUT whose body was on the wire at the kill may still complete
    there = len(ObjectDB(remote).all_oids())
    r = filled.push("f@best", url)
    assert r.objects_sent == total - there and r.objects_present == there  # only what was missing
    assert [m.dst for m in r.new_versions] == ["b@v1", "f@v1"]
    c = deltastore.open(tmp_path / "c")
    c.pull("f@best", url)
    c.checkout("f@best", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_two_processes_push_one_name(kind, filled, models, tmp_path: Path, request) -> None:
    url = _remote_url(kind, tmp_path, request)
    other = deltastore.open(tmp_path / "o")
    other.add_base("b", models.base)
    other.add_finetune("f", models.ft2, base="b", codec="lossless")
    other.close()
    go = tmp_path / "go"
    ps = [_spawn(str(filled.config.home), "f", url, "--go", str(go)), _spawn(str(tmp_path / "o"), "f", url, "--go", str(go))]
    time.sleep(1.0)
    go.touch()
    outs = []
    for p in ps:
        o, e = p.communicate(timeout=300)
        assert p.returncode == 0, e
        outs.append(json.loads(o.strip().splitlines()[-1]))
    assert sorted(o["dst_ref"] for o in outs) == ["f@v1", "f@v2"]
    side = RecordsSide(Backend(url), "r")
    assert side.refs() == ["b@v1", "f@v1", "f@v2"]  # one shared base, two fine-tunes, nothing overwritten
    mans = {side.resolve(r).manifest for r in ("f@v1", "f@v2")}
    assert mans == {filled.resolve("f").manifest, deltastore.open_store(tmp_path / "o").resolve("f").manifest}
    c = deltastore.open(tmp_path / "c")
    for o in outs:
        c.pull(o["dst_ref"], url)
    want = {filled.resolve("f").manifest: models.ft}
    for v in c.versions("f"):
        if v.manifest in want:
            c.checkout(v.ref, tmp_path / v.ref)
            assert tree_hashes(tmp_path / v.ref) == tree_hashes(want[v.manifest])
