"""Remotes a user types or shares, and what they hold, as a user meets them.

A remote URL whose password holds ``/`` (AWS secret keys often do) is never printed, by push or
pull, plain or ``--json``. A pull or a lazy fetch never moves a tag this store has on another
version (it says which it left). A record or a manifest holding a lone surrogate (valid JSON, no
UTF-8 text) is one clear error at the pull, nothing changed here, never a crash at a later read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import deltastore
from deltastore import remotes
from deltastore.backend import Backend
from deltastore.config import redact
from deltastore.errors import CorruptObjectError, CorruptRecordError, DeltaStoreError
from deltastore.manifest import Manifest
from deltastore.objects import ObjectDB
from deltastore.store import Store, init_store

from ..cli.test_cli import run
from ..conftest import finetune_of, llama_like, tree_hashes, write_model

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A base, a fine-tune of it, and a second base (small: these tests are about records)."""
    tmp = tmp_path_factory.mktemp("models")
    base = llama_like(0, hidden=32, layers=1, vocab=64)
    return (write_model(tmp / "m-base", base), write_model(tmp / "m-ft", finetune_of(base, seed=1)),
            write_model(tmp / "m-base2", llama_like(2, hidden=32, layers=1, vocab=64)))


def _state(st: deltastore.Store) -> tuple:
    """What a user relies on here: every object, every version (its manifest, message, tags)."""
    return (sorted(st.objects.all_oids()),
            [(v.ref, v.manifest, v.message, tuple(v.tags)) for m in st.models() for v in st.versions(m.name)])


# ----------------------------------------------------------------------------------------------
# 1. a password with "/" in a remote URL
# ----------------------------------------------------------------------------------------------
def test_a_remote_password_with_a_slash_is_never_printed(models, tmp_path: Path, monkeypatch) -> None:
    """``push``/``pull`` to an unnamed ``file://KEY:SECRET@/path`` remote: neither the plain line
    nor ``--json`` (its "remote") nor an error line holds the secret; the transfer still works."""
    monkeypatch.chdir(tmp_path)  # fsspec reads "KEY:SECRET@/path" as a path relative to here
    a, b = tmp_path / "a", tmp_path / "b"
    run(a, "init")
    run(a, "add", "base", "llama", str(models[0]), "--tag", "prod")
    url = f"file://AKIAIOSFODNN7EXAMPLE:{SECRET}@{tmp_path / 'remote'}"
    outs = [run(a, "push", "llama@v1", url), run(a, "push", "llama@v1", url, "--json")]
    run(b, "init")
    outs += [run(b, "pull", "llama@v1", url, "--json"), run(b, "pull", "llama@v1", url),
             run(b, "pull", "nosuch@v1", url, ok=False)]
    for p in outs:
        assert SECRET not in p.stdout + p.stderr and SECRET.split("/")[1] not in p.stdout + p.stderr, p.stdout + p.stderr
    assert "pushed llama@v1 to file://AKIAIOSFODNN7EXAMPLE:***@" in outs[0].stdout
    assert json.loads(outs[1].stdout)[0]["remote"].startswith("file://AKIAIOSFODNN7EXAMPLE:***@/")
    assert json.loads(outs[2].stdout)[0]["dst_ref"] == "llama@v1" and outs[4].returncode == 1
    with deltastore.open_store(a) as st:  # the API's result names it safely too (it is printed, logged)
        assert SECRET not in repr(st.push("llama@v1", url))
    # and the net under every write (any message that names the URL as typed) masks all of it
    said = redact(f"cannot open {url}: no; {json.dumps({'url': url})}")
    assert SECRET.split("/")[1] not in said and said.count("AKIAIOSFODNN7EXAMPLE:***@/") == 2


# ----------------------------------------------------------------------------------------------
# 2. a transfer never moves a tag
# ----------------------------------------------------------------------------------------------
def test_pull_and_lazy_fetch_never_move_a_local_tag(models, tmp_path: Path) -> None:
    """The remote has b@prod on b@v1; this clone's user moved prod to their own b@v2. A checkout
    that fetches f@v1 (whose base b@v1 is here already) and a pull of f@v1 leave prod on b@v2, and
    the pull says so; tags this store lacks still come over; a push leaves the remote's prod too."""
    url = str(tmp_path / "remote")
    src = deltastore.open(tmp_path / "src")
    src.add_base("b", models[0], tags=["prod"], message="base")
    src.add_finetune("f", models[1], base="b", codec="lossless", tags=["best"])
    src.push("f@v1", url)  # the remote: b@v1 (prod), f@v1 (best)
    home = tmp_path / "clone"
    remotes.clone(url, home, store_cls=Store, init=init_store)[0].close()
    st = deltastore.open(home)
    st.checkout("b@v1", tmp_path / "out0")  # fetched, with prod: this store had no prod
    assert st.resolve("b@prod").ref == "b@v1"
    st.add_base("b", models[2], tags=["prod"], message="my own prod")  # the user moves prod
    assert st.resolve("b@prod").ref == "b@v2"

    st.checkout("f@v1", tmp_path / "out1")  # a read: fetches f@v1, matches its base b@v1
    assert tree_hashes(tmp_path / "out1") == tree_hashes(models[1])
    assert st.resolve("b@prod").ref == "b@v2" and st.resolve("f@best").ref == "f@v1"  # best: lacked here
    st.close()

    src.tag("f@v1", "candidate")
    src.push("f@v1", url)  # the remote lacks candidate: set there
    p = run(home, "pull", "f@v1")
    assert "tag b@prod left at v2 (the remote has it on v1" in p.stdout, p.stdout
    assert "f@candidate" in p.stdout
    res = json.loads(run(home, "pull", "f@v1", "--json").stdout)[0]
    assert res["tags_left"] == [{"tag": "b@prod", "at": "b@v2", "source_at": "b@v1"}] and res["tags"] == []
    with deltastore.open_store(home) as st:
        assert st.resolve("b@prod").ref == "b@v2" and st.resolve("f@candidate").ref == "f@v1"
        pushed = st.push("b@v2", url)  # the remote's prod stays on its b@v1 too
        assert pushed.dst_ref == "b@v2" and [t.to_dict() for t in pushed.tags_left] == [
            {"tag": "b@prod", "at": "b@v1", "source_at": "b@v2"}]
    assert src.pull("b@prod", url).dst_ref == "b@v1"  # what the remote's prod names
    src.close()
    # asked for, a pull moves it (as git's fetch does with --force)
    p = run(home, "pull", "f@v1", "--move-tags")
    assert "tags: b@prod" in p.stdout and "left at" not in p.stdout, p.stdout
    with deltastore.open_store(home) as st:
        assert st.resolve("b@prod").ref == "b@v1"
        st.tag("b@v2", "prod")
    p = run(home, "push", "b@v2", "--move-tags")  # and a push moves the remote's
    assert "tags: b@prod" in p.stdout, p.stdout
    with deltastore.open(tmp_path / "src2") as other:
        other.pull("b@prod", url)
        assert other.resolve("b@prod").message == "my own prod"


# ----------------------------------------------------------------------------------------------
# 3. lone surrogates: valid JSON, no text
# ----------------------------------------------------------------------------------------------
def _rewrite(p: Path, **changes) -> None:
    """What any writer to a shared bucket can do to a record (json writes "\\ud800" for it)."""
    d = json.loads(p.read_text())
    d.update(changes)
    os.chmod(p, 0o644)
    p.write_text(json.dumps(d, sort_keys=True, indent=1))


@pytest.mark.parametrize("change, field", [
    ({"message": "hi \ud800"}, "message is not UTF-8 text"),
    ({"author": "\udcff"}, "author is not UTF-8 text"),
    ({"metrics": {"loss\ud800": 1.0}}, "metrics hold a string that is not UTF-8 text"),
])
def test_a_record_with_a_lone_surrogate_is_refused_at_the_pull(models, tmp_path: Path, change, field) -> None:
    """Pulled (one REF, or --all) it is one line naming the record and the field, with this store
    as it was; ``db rebuild`` over that bucket says the same; never an internal UnicodeEncodeError."""
    url = tmp_path / "remote"
    with deltastore.open(tmp_path / "src") as src:
        src.add_base("b", models[0], message="base")
        src.push("b@v1", str(url))
    key = "catalog/versions/b/v1.json"
    _rewrite(url / key, **change)
    dst = tmp_path / "dst"
    with deltastore.open(dst) as st:
        st.add_base("mine", models[2], tags=["prod"])  # this store's own: untouched by what follows
        before = _state(st)
    for args in (("pull", "b@v1", str(url)), ("pull", "b", str(url), "--all")):
        p = run(dst, *args, ok=False)
        assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
        assert f"record {key} is malformed: {field}" in p.stderr and "internal error" not in p.stderr, p.stderr
    with deltastore.open(dst) as st:
        assert _state(st) == before and not (dst / "catalog" / "versions" / "b").exists()
    rb = tmp_path / "rebuild"
    run(rb, "init", "--objects-url", str(url))
    p = run(rb, "db", "rebuild", ok=False)
    assert p.returncode == 1 and f"record {key} is malformed: {field}" in p.stderr and "internal error" not in p.stderr


def test_a_manifest_path_with_a_lone_surrogate_is_refused_at_parse(models, tmp_path: Path) -> None:
    """A remote manifest listing "conf\\ud800.json" (re-hashed, its record pointed at it: what
    any bucket writer can do) is a corrupt manifest at the pull, which takes nothing; a checkout
    here is then a clear "no such model", not a crash halfway through writing files."""
    url = tmp_path / "remote"
    with deltastore.open(tmp_path / "src") as src:
        src.add_base("b", models[0], message="base")
        src.push("b@v1", str(url))
        man = json.loads(src.objects.get(src.resolve("b@v1").manifest))
    for f in man["files"]:
        if f["path"] == "config.json":
            f["path"] = "conf\ud800.json"
    man["files"].sort(key=lambda f: f["path"])
    oid = ObjectDB(Backend(str(url))).put_bytes(json.dumps(man).encode(), "manifest").oid
    _rewrite(url / "catalog/versions/b/v1.json", manifest=oid)
    with pytest.raises(CorruptObjectError, match=r"conf\\ud800.json' is not UTF-8 text"):
        Manifest.from_json(json.dumps(man), oid)

    dst = tmp_path / "dst"
    deltastore.open(dst).close()
    p = run(dst, "pull", "b@v1", str(url), ok=False)
    assert p.returncode == 1 and "is not UTF-8 text" in p.stderr and "internal error" not in p.stderr, p.stderr
    p = run(dst, "checkout", "b@v1", str(tmp_path / "out"), ok=False)
    assert p.returncode == 1 and "no model named 'b'" in p.stderr and not (tmp_path / "out").exists(), p.stderr
    with deltastore.open(dst) as st:
        assert _state(st) == ([], [])

    from deltastore.fileview import plain_path

    assert not plain_path("conf\ud800.json") and plain_path("conf.json")
