"""Checkpoint series: linear runs with skip-deltas beyond bound the chain a checkout walks, and
every checkpoint comes back byte-exact (deltastore.chains)."""

from __future__ import annotations

from pathlib import Path

import torch

import pytest

from deltastore.chains import LINEAR, PREVIOUS_KEY, base_index, chain_depth, skip_index
from deltastore.errors import BadInputError

from ..conftest import finetune_of, llama_like, tree_hashes, write_model


def depth(store, ref: str) -> int:
    """Deltas a checkout of REF walks (bases followed until a version with none)."""
    n, v = 0, store.resolve(ref)
    while v.base is not None:
        n += 1
        v = store.resolve(v.base)
    return n


def test_skip_index_is_fsfs_skip_deltas():
    assert [skip_index(k) for k in range(1, 17)] == [0, 0, 2, 0, 4, 4, 6, 0, 8, 8, 10, 8, 12, 12, 14, 0]
    assert [base_index(k, 1) for k in range(1, 1025)] == [skip_index(k) for k in range(1, 1025)]  # LINEAR 1: skips only
    assert max(chain_depth(k, 1) for k in range(1, 1024)) == 10  # log2(n) + 1 at most
    assert sum(skip_index(k) == k - 1 for k in range(1, 1025)) == 512  # half delta on their predecessor


def test_series_bases_are_linear_then_skip_as_subversion_18():
    """Subversion 1.8's FSFS (max-linear-deltification = 16): the predecessor unless the skip-delta
    would reach back 16 or more; so 15 of 16 checkpoints delta on their predecessor, and the walk
    stays bounded (LINEAR - 1 + log2(n / LINEAR) + 1)."""
    assert LINEAR == 16
    assert [base_index(k) for k in range(1, 18)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0, 16]
    assert [base_index(k) for k in (32, 33, 48, 64, 80, 96, 112, 128)] == [0, 32, 32, 0, 64, 64, 96, 0]
    assert sum(base_index(k) == k - 1 for k in range(2, 1025)) == 1023 - 64
    assert [chain_depth(k) for k in (1, 2, 15, 16, 17, 31, 32, 48, 63)] == [0, 1, 14, 1, 2, 16, 1, 2, 17]
    assert max(chain_depth(k) for k in range(1, 1024)) == 21
    assert max(chain_depth(k, 4) for k in range(1, 17)) == 5


def test_the_series_run_length_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DELTASTORE_SERIES_LINEAR", "4")
    assert [base_index(k) for k in range(1, 9)] == [0, 1, 2, 0, 4, 5, 6, 0]
    for bad in ("0", "-1", "x", "1.5", ""):
        monkeypatch.setenv("DELTASTORE_SERIES_LINEAR", bad)
        with pytest.raises(BadInputError, match="DELTASTORE_SERIES_LINEAR"):
            base_index(5)


def test_sixteen_chained_checkpoints_check_out_exact_with_a_short_chain(store, tmp_path: Path, monkeypatch):
    """Runs of 4 (DELTASTORE_SERIES_LINEAR=4) so that 16 checkpoints show both the linear runs and the skips."""
    monkeypatch.setenv("DELTASTORE_SERIES_LINEAR", "4")
    base = llama_like(0, hidden=16, layers=1, vocab=32)
    store.add_base("smol", write_model(tmp_path / "base", base))
    cur, srcs = base, []
    for i in range(16):  # each checkpoint a small step from the one before, as a training run saves
        cur = finetune_of(cur, seed=100 + i, scale=2e-3, touch_norms=True)
        src = write_model(tmp_path / f"ck{i:02d}", cur)
        srcs.append(src)
        v = store.add_finetune("run", src, base="smol" if i == 0 else "run@latest", codec="lossless")
        assert v.number == i + 1
    # the actual bases: v1 on the base model, then v(n) on v(n-1) unless n's lowest set bit is 4 or
    # more: then on n with that bit cleared (v1, the root, for 0)
    want = {1: "smol@v1", 2: "run@v1", 3: "run@v2", 4: "run@v1", 5: "run@v4", 6: "run@v5", 7: "run@v6",
            8: "run@v1", 9: "run@v8", 12: "run@v8", 13: "run@v12", 15: "run@v14", 16: "run@v1"}
    for n, b in want.items():
        v = store.resolve(f"run@v{n}")
        assert v.base == b, n
        # the checkpoint it was saved after is kept where the delta base differs from it
        assert v.metrics.get(PREVIOUS_KEY) == (None if b in (f"run@v{n - 1}", "smol@v1") else f"run@v{n - 1}"), n
    assert max(depth(store, f"run@v{n}") for n in range(1, 17)) == 6
    assert depth(store, "run@v16") == 2 and depth(store, "run@v15") == 6 and depth(store, "run@v11") == 5
    for n in range(1, 17):
        out = tmp_path / f"out{n}"
        assert store.checkout(f"run@v{n}", out).exact
        assert tree_hashes(out) == tree_hashes(srcs[n - 1]), n
    # log still lists the series in order
    assert [v.number for v in store.versions("run")] == list(range(1, 17))


def test_other_adds_keep_the_base_they_name(store, tmp_path: Path):
    base = llama_like(0, hidden=16, layers=1, vocab=32)
    store.add_base("b", write_model(tmp_path / "base", base))
    a = finetune_of(base, seed=1, scale=1e-3)
    b = finetune_of(a, seed=2, scale=1e-3)
    c = finetune_of(b, seed=3, scale=1e-3)
    store.add_finetune("r", write_model(tmp_path / "a", a), base="b", codec="lossless")
    store.add_finetune("r", write_model(tmp_path / "b2", b), base="r@latest", codec="lossless")  # v2 -> v1 (root)
    # an explicit older base, and a lossy codec, are taken as given
    assert store.add_finetune("r", write_model(tmp_path / "c", c), base="r@v1", codec="lossless").base == "r@v1"
    v4 = store.add_finetune("r", write_model(tmp_path / "d", c), base="r@latest", codec={"id": "lowrank", "alpha": 0.25})
    assert v4.base == "r@v3" and PREVIOUS_KEY not in v4.metrics
    # a different model's latest is not a series
    v = store.add_finetune("s", write_model(tmp_path / "e", c), base="r@latest", codec="lossless")
    assert v.base == "r@v4"
    assert torch.equal(store.tensor("r@v3", "lm_head.weight").view(torch.uint8), c["lm_head.weight"].view(torch.uint8))


def test_the_cli_series_add_uses_skip_deltas(tmp_path: Path, monkeypatch):
    """`deltastore add finetune RUN PATH --base RUN@latest --codec lossless`, as the issue writes it
    (runs of 2, so that 4 checkpoints take a skip: v4 on the root)."""
    monkeypatch.setenv("DELTASTORE_SERIES_LINEAR", "2")
    import json

    from ..clirun import cli

    h = str(tmp_path / "h")
    assert cli("--home", h, "init").returncode == 0
    base = llama_like(5, hidden=16, layers=1, vocab=32)
    assert cli("--home", h, "add", "base", "b", str(write_model(tmp_path / "base", base))).returncode == 0
    cur = base
    for i in range(4):
        cur = finetune_of(cur, seed=20 + i, scale=1e-3, touch_norms=True)
        p = cli("--home", h, "add", "finetune", "run", str(write_model(tmp_path / f"c{i}", cur)),
                "--base", "b" if i == 0 else "run@latest", "--codec", "lossless")
        assert p.returncode == 0, p.stderr
    log = json.loads(cli("--home", h, "log", "run", "--json").stdout)
    assert [(v["number"], v["base"]) for v in log] == [(4, "run@v1"), (3, "run@v2"), (2, "run@v1"), (1, "b@v1")]
    assert log[0]["metrics"][PREVIOUS_KEY] == "run@v3"
    human = cli("--home", h, "log", "run").stdout  # the series order stays visible beside the delta base
    assert "base run@v1 (saved after run@v3)" in human and "base run@v2 (saved after" not in human
    out = tmp_path / "out"
    assert cli("--home", h, "checkout", "run@v4", str(out)).returncode == 0
    assert tree_hashes(out) == tree_hashes(tmp_path / "c3")


def test_a_base_chain_deeper_than_the_limit_is_said_to_be(tmp_path: Path):
    """A version 1,500 base links from its root (planted: manifests whose bases chain, imported by
    db rebuild): a tensor is rebuilt by recursing down the chain, so its checkout ran out of
    Python's stack and said 'object (manifest) is corrupt: not a valid manifest: maximum recursion
    depth exceeded', blaming a manifest that is fine (state_dict and add: a bare RecursionError;
    a read through the mount's file view: the same corrupt manifest).
    Now each says the chain is deeper than the limit, naming the version, and writes nothing;
    versions at the limit still check out exact, and an add may reach it."""
    import json
    from dataclasses import replace

    import pytest

    import deltastore
    from deltastore import records
    from deltastore.chains import MAX_BASE_CHAIN
    from deltastore.errors import ChainTooDeepError
    from tests.clirun import cli

    home = tmp_path / "home"
    sd = llama_like(0, hidden=8, layers=1, vocab=8)
    b, f = write_model(tmp_path / "b", sd), write_model(tmp_path / "f", finetune_of(sd))
    with deltastore.open(home) as st:  # f@v1: f's bits as deltas on b; g@v1: b's bits as deltas on f
        st.add_base("b", b)
        v1 = st.add_finetune("f", f, base="b", codec="lossless")
        g = st.add_finetune("g", b, base="f", codec="lossless")
        mans = [st.manifest(v1.manifest), st.manifest(g.manifest)]
        rec = json.loads(st.backend.get(records.version_key("f", 1)))
        prev = v1.manifest
        for i in range(2, 1501):  # f@vi: i links from b, holding f's bits (odd i) or b's (even i)
            prev = st.objects.put_bytes(replace(mans[(i - 1) % 2], base=prev).to_json(), "manifest").oid
            st.backend.put(records.version_key("f", i), json.dumps(
                rec | {"number": i, "manifest": prev, "base": f"f@v{i - 1}", "created_at": f"2024-01-01T00:00:00.{i:06d}"}).encode())
        st.backend.flush()
    for p in home.glob("catalog.db*"):
        p.unlink()
    with deltastore.open(home) as st:
        assert st.rebuild_catalog().versions == 1502
        want = f"f@v1500's base chain is deeper than the limit of {MAX_BASE_CHAIN} versions"
        p = cli("checkout", "f@v1500", str(tmp_path / "out"), "--home", str(home))
        assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr
        assert p.stderr.strip().splitlines() == [f"deltastore: error: {want} that deltastore rebuilds tensors through"]
        assert not (tmp_path / "out").exists()
        for op in (lambda: st.state_dict("f@v1500"), lambda: st.tensor("f@v1500", "model.layers.0.mlp.up_proj.weight")):
            with pytest.raises(ChainTooDeepError, match=want):
                op()
        from deltastore.fs import DeltaStoreFileSystem  # the mount's reader: files computed on read

        fs = DeltaStoreFileSystem(str(home), skip_instance_cache=True)
        with pytest.raises(ChainTooDeepError, match=f"manifest {prev}: its base chain is deeper than the limit"):
            fs.cat_file("f@v1500/model.safetensors")
        objects = sorted(st.objects.all_oids())
        with pytest.raises(ChainTooDeepError, match=f"f@v{MAX_BASE_CHAIN} is at least {MAX_BASE_CHAIN} base links"):
            st.add_finetune("h", f, base=f"f@v{MAX_BASE_CHAIN}", codec="lossless")
        assert sorted(st.objects.all_oids()) == objects and "h" not in [m.name for m in st.models()]
        st.checkout(f"f@v{MAX_BASE_CHAIN}", tmp_path / "at-limit")  # even: b's bits
        assert tree_hashes(tmp_path / "at-limit") == tree_hashes(b)
        h = st.add_finetune("h", f, base=f"f@v{MAX_BASE_CHAIN - 1}", codec="lossless")
        assert st.resolve(h.ref).base == f"f@v{MAX_BASE_CHAIN - 1}"  # MAX_BASE_CHAIN links from b
        st.checkout(h.ref, tmp_path / "h")
        assert tree_hashes(tmp_path / "h") == tree_hashes(f)


def test_db_rebuild_keeps_and_names_versions_deeper_than_the_limit(tmp_path: Path, monkeypatch):
    """A store whose records hold a version with a base chain deeper than chains.MAX_BASE_CHAIN
    (5 here, 500 in use): db rebuild imported it and said nothing, so the first word of it was a
    checkout's refusal. Skipping it would lose it (and what keeps its objects from gc); it is
    imported, and rebuild names it: a line from the CLI, and the report's too_deep. (The CLI also
    said nothing of records it skipped, here one whose manifest is gone: now a line too.) Every
    version is back, its tag too; the deep one is refused at checkout, the one at the limit checks
    out exact."""
    import json

    import pytest

    import deltastore
    from deltastore import chains, records
    from deltastore.errors import ChainTooDeepError
    from tests.clirun import cli

    home = tmp_path / "home"
    sd = llama_like(0, hidden=8, layers=1, vocab=8)
    dirs = [write_model(tmp_path / "b", sd), write_model(tmp_path / "f", finetune_of(sd))]
    with deltastore.open(home) as st:  # c<k>@v1: k links from b, a lossless fine-tune of c<k-1>
        st.add_base("b", dirs[0])
        for k in range(1, 7):
            st.add_finetune(f"c{k}", dirs[k % 2], base="b" if k == 1 else f"c{k - 1}", codec="lossless", tags=["t"])
        want = sorted((v.ref, v.manifest) for m in st.models() for v in st.versions(m.name))
        rec = json.loads(st.backend.get(records.version_key("b", 1)))  # and a record whose manifest is gone
        st.backend.put(records.version_key("gone", 1), json.dumps(rec | {"model": "gone", "manifest": "sha256:" + "0" * 64}).encode())
    for p in home.glob("catalog.db*"):
        p.unlink()
    monkeypatch.setattr(chains, "MAX_BASE_CHAIN", 5)
    too_deep = ("catalog/versions/c6/v1.json: c6@v1's base chain is deeper than the limit of 5 versions that deltastore "
                "rebuilds tensors through (6 links): imported; checkout refuses it")
    skipped = f"catalog/versions/gone/v1.json: its manifest sha256:{'0' * 64} is not on the backend"
    p = cli("db", "rebuild", "--home", str(home))
    assert p.returncode == 0 and "Traceback" not in p.stdout + p.stderr, p.stderr[-2000:]
    said = " ".join(p.stdout.split())  # (the console wraps long lines)
    assert said.startswith("rebuilt 7 versions, 6 tags") and said.endswith(
        f" 1 versions have a base chain deeper than deltastore rebuilds tensors through (first: {too_deep}) "
        f"1 records not imported (first: {skipped}); --json lists them all")
    with deltastore.open(home) as st:
        assert sorted((v.ref, v.manifest) for m in st.models() for v in st.versions(m.name)) == want
        assert st.resolve("c6@t").ref == "c6@v1"
        with pytest.raises(ChainTooDeepError, match="c6@v1's base chain is deeper than the limit of 5"):
            st.checkout("c6", tmp_path / "out6")
        st.gc()
        assert st.verify().ok
        st.checkout("c5", tmp_path / "out5")
        assert tree_hashes(tmp_path / "out5") == tree_hashes(dirs[1])
    with deltastore.open(tmp_path / "other", objects_url=str(home)) as st:  # the API's report says the same
        rep = st.rebuild_catalog()
        assert rep.versions == 7 and rep.too_deep == [too_deep] and rep.to_dict()["too_deep"] == [too_deep]
        assert rep.skipped == [skipped]
