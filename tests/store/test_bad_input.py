"""Bad input: one clear error, and the store exactly as it was."""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deltastore import maintenance
from deltastore.objects import key_of
from deltastore.errors import (
    BadNameError,
    BadSafetensorsError,
    BaseMismatchError,
    ConflictError,
    CorruptObjectError,
    LockedError,
    PickleRefusedError,
    UnknownRefError,
)

from ..conftest import finetune_of, llama_like, tree_hashes, write_model


def snapshot(store) -> tuple:
    """Everything a failed command must leave as it was: objects and catalog rows."""
    return (sorted(store.objects.all_oids()), [(m.name, m.versions) for m in store.models()])


@pytest.fixture
def populated(store, tmp_path: Path):
    base = llama_like(0)
    store.add_base("b", write_model(tmp_path / "b", base))
    return store, base


def test_wrong_base_shape(populated, tmp_path: Path) -> None:
    store, _ = populated
    other = write_model(tmp_path / "x", llama_like(0, hidden=32))
    before = snapshot(store)
    with pytest.raises(BaseMismatchError, match="not a fine-tune of b@v1: tensor .* is \\[.*\\] here"):
        store.add_finetune("x", other, base="b", codec="lossless")
    assert snapshot(store) == before


def test_wrong_base_names(populated, tmp_path: Path) -> None:
    store, base = populated
    sd = dict(base)
    sd["extra.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)
    del sd["lm_head.weight"]
    before = snapshot(store)
    with pytest.raises(BaseMismatchError, match="base lacks .*extra.weight.*lacks 1 of the base's tensors"):
        store.add_finetune("x", write_model(tmp_path / "x", sd), base="b", codec="lossless")
    assert snapshot(store) == before


@pytest.mark.parametrize("ref", ["nope", "b@v7", "b@sometag", "b@", "../b"])
def test_unknown_ref(populated, tmp_path: Path, ref: str) -> None:
    store, _ = populated
    with pytest.raises(UnknownRefError):
        store.checkout(ref, tmp_path / "o")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_missing_path(store, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no such file"):
        store.add_base("m", tmp_path / "does-not-exist")


def test_dir_without_weights(store, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("{}")
    with pytest.raises(Exception, match="no .safetensors weights"):
        store.add_base("m", tmp_path / "d")


@pytest.mark.parametrize("cut", [4, 30, -100, -1])
def test_truncated_safetensors(populated, tmp_path: Path, cut: int) -> None:
    store, base = populated
    d = write_model(tmp_path / "t", finetune_of(base))
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:cut] if cut > 0 else data[:cut])
    before = snapshot(store)
    with pytest.raises(BadSafetensorsError, match="truncated|too short"):
        store.add_base("t", d)
    assert snapshot(store) == before


def _rewrite_header(f: Path, edit) -> None:
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    head = json.loads(data[8 : 8 + n])
    edit(head)
    js = json.dumps(head).encode()
    js += b" " * (n - len(js)) if len(js) <= n else b""
    f.write_bytes(struct.pack("<Q", len(js)) + js + data[8 + n :])


@pytest.mark.parametrize("lie", ["offsets", "dtype", "overlap", "unknown-dtype"])
def test_header_that_lies(populated, tmp_path: Path, lie: str) -> None:
    store, base = populated
    d = write_model(tmp_path / "l", base)
    name = "model.layers.0.self_attn.q_proj.weight"

    def edit(h):  # noqa: ANN001
        if lie == "offsets":
            s, e = h[name]["data_offsets"]
            h[name]["data_offsets"] = [s, e + 2]
        elif lie == "dtype":
            h[name]["dtype"] = "F32"  # same shape, twice the bytes the offsets give
        elif lie == "overlap":
            other = next(k for k in h if k != name and k != "__metadata__")
            h[name]["data_offsets"] = h[other]["data_offsets"]
        else:
            h[name]["dtype"] = "Q4"

    _rewrite_header(d / "model.safetensors", edit)
    before = snapshot(store)
    with pytest.raises(BadSafetensorsError, match="header lies|unknown dtype|truncated|past the last"):
        store.add_base("l", d)
    assert snapshot(store) == before


@pytest.mark.parametrize("fname", ["pytorch_model.bin", "model.pt", "ckpt.ckpt", "model.safetensors"])
def test_pickle_refused_never_loaded(store, tmp_path: Path, fname: str) -> None:
    d = tmp_path / "p"
    d.mkdir()
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (d / fname).write_bytes(pickle.dumps(Evil()))
    (d / "config.json").write_text("{}")
    with pytest.raises(PickleRefusedError, match="never unpickles"):
        store.add_base("p", d)
    assert not marker.exists()
    assert store.models() == []


@pytest.mark.parametrize("name", ["a/b", "..", "a..b", "bad\x07name", "tab\tname", "", ".hidden", "x@v1", "a\\b"])
def test_bad_names(store, base_dir: Path, name: str) -> None:
    with pytest.raises(BadNameError):
        store.add_base(name, base_dir)
    assert store.models() == []


def test_bad_tag_names(populated) -> None:
    store, _ = populated
    for t in ["v2", "latest", "a/b"]:
        with pytest.raises(BadNameError):
            store.tag("b", t)


def test_existing_nonempty_checkout_dir_refused(populated, tmp_path: Path) -> None:
    store, _ = populated
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match="not empty"):
        store.checkout("b", out)
    assert (out / "keep.txt").read_text() == "mine"


ADD_SCRIPT = """
import sys, deltastore
st = deltastore.open(sys.argv[1])
print("started", flush=True)
st.add_base("big", sys.argv[2])
"""


def test_interrupted_add_leaves_store_consistent(store, tmp_path: Path) -> None:
    """Kill an add mid-way: the next command works, verify is clean, gc removes the leftovers."""
    store.add_base("b", write_model(tmp_path / "b", llama_like(0)))
    before_models = [(m.name, m.versions) for m in store.models()]
    g = torch.Generator().manual_seed(0)
    big = {f"w{i}": torch.randn(1024, 1024, generator=g).to(torch.bfloat16) for i in range(96)}
    src = write_model(tmp_path / "big", big)
    home = store.config.home
    proc = subprocess.Popen([sys.executable, "-c", ADD_SCRIPT, str(home), str(src)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    # wait until it has written some objects, then kill it hard
    n0 = len(store.objects.all_oids())
    deadline = time.time() + 60
    while len(store.objects.all_oids()) < n0 + 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [(m.name, m.versions) for m in store.models()] == before_models
    assert store.verify().ok
    rep = store.gc()
    assert rep.deleted > 0  # the dead add's objects; its lease is gone with its process
    assert store.verify().ok
    v = store.add_base("big", src)
    store.checkout(v.ref, tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(src)


def test_gc_spares_objects_of_an_add_in_progress(store, tmp_path: Path) -> None:
    store.add_base("b", write_model(tmp_path / "b", llama_like(0)))
    with maintenance.lease(store, "test add"):
        orphan = store.objects.put_bytes(b"written by an add that has not committed yet")
        with pytest.raises(LockedError, match="'test add'"):  # gc waits for adds, then says who holds the store
            maintenance.gc(store, wait_s=0.2)
        assert store.objects.exists(orphan.oid)
    assert store.gc().deleted == 1
    assert not store.objects.exists(orphan.oid)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_base_object_fails_finetune_add_and_checkout(populated, tmp_path: Path, damage: str) -> None:
    """A base tensor object cut short or changed on disk, read whole into the add's and the
    checkout's reused buffers: one error naming the object, no version recorded by the add (deltas
    its other workers wrote are left to gc, as for any add that fails midway), and a sound object
    read through the same buffers afterwards still comes back right."""
    store, base = populated
    ft = finetune_of(base)
    store.add_finetune("good", write_model(tmp_path / "g", ft), base="b", codec="lossless")
    man = store.manifest(store.resolve("b").manifest)
    entry = max((e for _, e in man.tensors()), key=lambda e: e.nbytes)  # a planes-coded object
    path = Path(store.objects.backend._path(key_of(entry.object)))
    data = path.read_bytes()
    os.chmod(path, 0o644)
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    before = snapshot(store)[1]
    with pytest.raises(CorruptObjectError) as e:
        store.add_finetune("f", write_model(tmp_path / "f", finetune_of(base, seed=2)), base="b", codec="lossless")
    assert e.value.oid == entry.object
    assert snapshot(store)[1] == before
    with pytest.raises(CorruptObjectError) as e:
        store.checkout("good", tmp_path / "out")
    assert e.value.oid == entry.object
    path.write_bytes(data)
    store.checkout("good", tmp_path / "out2")
    assert tree_hashes(tmp_path / "out2")["model.safetensors"] == tree_hashes(tmp_path / "g")["model.safetensors"]


def test_gc_is_not_held_by_a_fifo_in_the_catalog_folder(populated, tmp_path: Path) -> None:
    """A FIFO planted where version records go: gc (a real process) finishes and keeps the base."""
    store, _ = populated
    d = Path(store.backend._path("catalog/versions/b"))
    os.mkfifo(d / "v9.json")
    p = subprocess.run([sys.executable, "-m", "cli", "gc", "--home", str(tmp_path / "home")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    store.checkout("b", tmp_path / "out")


def test_no_version_number_past_the_last_one_a_ref_can_name(populated, tmp_path: Path) -> None:
    """A model whose catalog holds v2147483647 (rebuilt from a bucket that had one): the next add
    is one ConflictError, not a v2147483648 that no REF, record or PostgreSQL column takes."""
    import sqlite3

    store, base = populated
    with sqlite3.connect(tmp_path / "home" / "catalog.db") as db:
        db.execute("UPDATE versions SET number = 2147483647")
    before = snapshot(store)[1]
    with pytest.raises(ConflictError, match="every version number"):
        store.add_base("b", write_model(tmp_path / "b2", finetune_of(base)))
    assert snapshot(store)[1] == before


def test_checkout_keeps_a_file_named_like_its_temp_file(store, tmp_path: Path) -> None:
    """A folder added with a leftover ``.model.safetensors.deltastore-tmp`` (a checkout killed
    midway, then added): checkout writes that file too, not over it with its own temp file."""
    d = write_model(tmp_path / "m", llama_like(0))
    (d / ".model.safetensors.deltastore-tmp").write_bytes(b"left over")
    store.add_base("m", d)
    store.checkout("m", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(d)


def test_checkout_without_room_is_one_clear_error(store, tmp_path: Path) -> None:
    """A checkout that the disk (here a file size limit) cannot hold: one BadInputError naming the
    file, from a real process, nothing left behind."""
    store.add_base("m", write_model(tmp_path / "m", llama_like(0, hidden=128)))
    code = (
        "import resource, signal, sys, deltastore\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))\n"
        "st = deltastore.open(sys.argv[1])\n"
        "try:\n"
        "    st.checkout('m', sys.argv[2])\n"
        "except deltastore.errors.BadInputError as e:\n"
        "    print('ERR', e)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "home"), str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ERR no room to write model.safetensors"), p.stdout
    assert [x.name for x in (tmp_path / "out").iterdir()] in ([], ["config.json"], ["config.json", "tokenizer.json"],
                                                              ["tokenizer.json", "config.json"])


def test_verify_of_a_catalog_whose_base_chain_loops(populated, tmp_path: Path) -> None:
    """Catalog rows whose base chain loops (no add writes them): verify stops with one error line
    instead of walking the loop forever."""
    import sqlite3

    store, base = populated
    store.add_finetune("f", write_model(tmp_path / "f", finetune_of(base)), base="b", codec="lossless")
    with sqlite3.connect(tmp_path / "home" / "catalog.db") as db:
        (fid,) = db.execute("SELECT id FROM versions WHERE base_version_id IS NOT NULL").fetchone()
        db.execute("UPDATE versions SET base_version_id = ? WHERE base_version_id IS NULL", (fid,))
    p = subprocess.run([sys.executable, "-m", "cli", "verify", "f", "--home", str(tmp_path / "home")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0 and "loops back to itself" in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("message", ["m" * (2 << 20), "\u00e9" * 200_000])
def test_a_message_no_record_holds_is_refused_before_anything_is_written(populated, tmp_path: Path, message: str) -> None:
    """add took a message of any length and wrote it into the version's record, which readers cap
    at records.MAX_RECORD: db rebuild, gc and every pull of the model then failed on that record.
    Now add refuses it first (2 MiB of ASCII; 200,000 characters that escape to 1.2 MB), one line
    from the CLI saying the limit, with no object, row or record written."""
    from deltastore import records
    from tests.clirun import cli

    st, _ = populated
    before = snapshot(st)
    recs = sorted(st.backend.list("catalog"))
    ft = write_model(tmp_path / "ft", finetune_of(llama_like(0), seed=3))
    from deltastore.errors import BadInputError

    with pytest.raises(BadInputError, match=f"message too long.*at most {records.MAX_MESSAGE}"):
        st.add_finetune("f", ft, base="b", codec="lossless", message=message)
    p = cli("add", "base", "nb", str(ft), "-m", message, "--home", str(st.config.home))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "Traceback" not in p.stdout + p.stderr
    assert lines[0].startswith("deltastore: error: message too long") and f"at most {records.MAX_MESSAGE}" in lines[0]
    assert snapshot(st) == before and sorted(st.backend.list("catalog")) == recs
    longest = "\u00e9" + "x" * (records.MAX_MESSAGE - 6)  # the limit is one a record holds: readers take it
    v = st.add_finetune("f", ft, base="b", codec="lossless", message=longest)
    key = records.version_key("f", v.number)
    assert records.parse_version(key, records.read(st.backend, key))["message"] == longest



def _nested(levels: int) -> dict:
    d: object = 0.5
    for _ in range(levels - 1):
        d = {"x": d}
    return {"loss": d}


@pytest.mark.parametrize("metrics, want", [
    (_nested(33), "metrics nests deeper than 32 levels"),  # was added; its record then refused by every reader
    (_nested(2000), "metrics nests deeper than 32 levels"),  # was a StatementError (RecursionError) traceback at the commit
    ({"curve": list(range(600_000))}, "metrics holds more than 524288 values"),  # was added: a 4 MiB record
    ({"log": "x" * (2 << 20)}, "metrics too large: they take 2097166 bytes"),  # was added: a 2 MiB record
    ({"seen": {1, 2}}, "metrics are not JSON: Object of type set"),  # was a StatementError traceback at the commit
])
def test_metrics_no_record_holds_are_refused_before_anything_is_written(populated, tmp_path: Path, metrics: dict,
                                                                         want: str) -> None:
    """add wrote whatever metrics it was given into the version's record, which readers cap at
    MAX_JSON_DEPTH levels, MAX_JSON_VALUES values and MAX_RECORD bytes: such a version committed,
    and then db rebuild refused its record, gc listed it unreadable and every pull of its model
    from a remote failed; metrics nested 2,000 levels, or not JSON, failed the commit with a
    traceback after every object was written. Now add refuses them first (the records module's
    own rule), one BadInputError, nothing written; metrics up to the limit make a record readers take."""
    from deltastore import records
    from deltastore.errors import BadInputError

    st, _ = populated
    before, recs = snapshot(st), sorted(st.backend.list("catalog"))
    ft = write_model(tmp_path / "ft", finetune_of(llama_like(0), seed=3))
    for add in (lambda: st.add_finetune("f", ft, base="b", codec="lossless", metrics=metrics),
                lambda: st.add_base("nb", ft, metrics=metrics)):
        with pytest.raises(BadInputError, match=f"^{want}"):
            add()
        assert snapshot(st) == before and sorted(st.backend.list("catalog")) == recs
    most = {"log": "x" * (records.MAX_MESSAGE - 2000)}  # with the message, at most MAX_MESSAGE: a record readers take
    with pytest.raises(BadInputError, match="metrics too large.*and its message 2000, .* at most"):
        st.add_finetune("f", ft, base="b", codec="lossless", metrics=most, message="m" * 2000)
    v = st.add_finetune("f", ft, base="b", codec="lossless", metrics=most | {"depth": _nested(31)}, message="m" * 50)  # 32 levels
    key = records.version_key("f", v.number)
    assert records.parse_version(key, records.read(st.backend, key))["metrics"] == most | {"depth": _nested(31)}
    assert st.resolve(v.ref).metrics == most | {"depth": _nested(31)}


def test_metrics_that_are_not_a_dict_are_one_clear_error_from_either_add(populated, tmp_path: Path) -> None:
    """Store.add_finetune copied the metrics with dict() before any check, so a list of pairs
    went through as a dict and anything else was a bare TypeError; now the records module's rule
    answers first, for a base and a fine-tune alike, and nothing is written."""
    from deltastore.errors import BadInputError

    st, _ = populated
    before = snapshot(st)
    ft = write_model(tmp_path / "ft", finetune_of(llama_like(0), seed=3))
    for bad in (["not", "a dict"], [("k", 1)], 3, "text"):
        for add in (lambda: st.add_finetune("f", ft, base="b", codec="lossless", metrics=bad),
                    lambda: st.add_base("nb", ft, metrics=bad)):
            with pytest.raises(BadInputError, match="metrics are a dict"):
                add()
    assert snapshot(st) == before
