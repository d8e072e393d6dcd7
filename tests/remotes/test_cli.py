"""The remote commands as users type them: remote add/ls/rm, push, clone, pull, verify --repair,
and one clear line (exit 1, nothing changed) for a remote that cannot be used."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import deltastore
from deltastore.objects import key_of

from ..cli.test_cli import run
from ..conftest import tree_hashes


def test_remote_commands(models, tmp_path: Path) -> None:
    a, b, url = tmp_path / "a", tmp_path / "b", tmp_path / "remote"
    run(a, "init")
    run(a, "add", "base", "llama", str(models.base), "--tag", "prod")
    run(a, "add", "finetune", "wiz", str(models.ft), "--base", "llama", "--codec", "lossless")
    run(a, "remote", "add", "origin", str(url))
    assert [r["name"] for r in json.loads(run(a, "remote", "ls", "--json").stdout)] == ["origin"]
    out = run(a, "push", "wiz").stdout
    assert "pushed wiz@v1 to origin as wiz@v1" in out and "llama@prod" in out
    res = json.loads(run(a, "push", "--all", "--json").stdout)
    assert [r["objects_sent"] for r in res] == [0, 0]

    run(tmp_path, "clone", str(url), str(b))
    assert json.loads(run(b, "ls", "--json").stdout) == []  # nothing pulled until asked
    pulled = json.loads(run(b, "pull", "wiz@v1", "--json").stdout)[0]
    assert [v["dst"] for v in pulled["versions"]] == ["llama@v1", "wiz@v1"]
    run(b, "checkout", "wiz", str(tmp_path / "out"))
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft)

    with deltastore.open_store(b) as st:
        oid = next(t.object for _, t in st.manifest("wiz").tensors() if t.object)
    p = b / key_of(oid)
    os.chmod(p, stat.S_IRUSR | stat.S_IWUSR)
    p.write_bytes(b"garbage")
    assert run(b, "verify", ok=False).returncode == 1
    rep = run(b, "verify", "--repair", "origin")
    assert "replaced with the copy from origin" in rep.stdout
    run(b, "verify")
    run(a, "remote", "rm", "origin")
    assert json.loads(run(a, "remote", "ls", "--json").stdout) == []


def test_bad_remote_is_one_line(models, tmp_path: Path) -> None:
    a = tmp_path / "a"
    run(a, "init")
    run(a, "add", "base", "llama", str(models.base))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "photo.jpg").write_bytes(b"\xff\xd8")
    before = sorted(p.relative_to(a) for p in a.rglob("*") if "catalog.db" not in p.name)
    for args, want in ((("push", "llama", str(tmp_path / "junk")), "not a deltastore store"),
                       (("pull", "llama", str(tmp_path / "nowhere")), "is empty"),
                       (("pull", "llama", "nosuchremote"), "no remote named")):
        p = run(a, *args, ok=False)
        assert p.returncode == 1 and p.stderr.count("\n") == 1 and want in p.stderr, p.stderr
    assert sorted(p.relative_to(a) for p in a.rglob("*") if "catalog.db" not in p.name) == before
    p = run(tmp_path, "clone", str(tmp_path / "junk"), str(tmp_path / "c"), ok=False)
    assert p.returncode == 1 and "not a deltastore store" in p.stderr and not (tmp_path / "c").exists()
