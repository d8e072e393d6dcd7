"""A remote someone else controls, or a damaged one: what it holds is not trusted. A record, a
manifest or an object that is huge, or a FIFO where a file should be, is one clear error naming
it, read no further than what such a thing may hold, with nothing changed here."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

import deltastore
from deltastore import remotes
from deltastore.errors import ConflictError, CorruptObjectError, RemoteError
from deltastore.objects import key_of

from ..conftest import tree_hashes

TIB = 1 << 40


class Hung(Exception):
    """Raised by the alarm: the operation blocked."""


@contextlib.contextmanager
def deadline(seconds: int):
    def boom(*_):
        raise Hung(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _state(st) -> tuple:
    """What a user relies on here: every object, every version (its manifest, its tags)."""
    return (sorted(st.objects.all_oids()),
            [(v.ref, v.manifest, tuple(v.tags)) for m in st.models() for v in st.versions(m.name)])


def _sparse(p: Path, size: int = TIB) -> None:
    """A file claiming ``size`` bytes (sparse: no disk used); read whole it would exhaust memory."""
    if p.exists():
        os.chmod(p, 0o644)
    with open(p, "ab") as f:
        f.truncate(size)


def _pushed(source, tmp_path: Path, ref: str = "f") -> Path:
    url = tmp_path / "remote"
    source.push(ref, str(url))
    return url


def test_huge_record_is_refused(source, other, tmp_path: Path) -> None:
    url = _pushed(source, tmp_path)
    _sparse(url / "catalog" / "versions" / "f" / "v7.json")
    before = _state(other)
    with deadline(20), pytest.raises(RemoteError, match="catalog/versions/f/v7.json"):
        other.pull("f", str(url))  # the latest there is v7 (f@v1 still pulls: test_pull_all.py)
    assert _state(other) == before
    # a huge tag record refuses its tag only (it failed every pull of b): b@v1 comes without it
    _sparse(url / "catalog" / "tags" / "b" / "prod.json")
    with deadline(20), pytest.raises(RemoteError, match="catalog/tags/b/prod.json"):
        other.pull("b@prod", str(url))
    assert _state(other) == before
    with deadline(20):
        assert other.pull("b@v1", str(url)).dst_ref == "b@v1"
    assert other.resolve("b@v1").tags == []


def test_fifo_record_does_not_block(source, other, tmp_path: Path) -> None:
    url = _pushed(source, tmp_path, "b")
    os.mkfifo(url / "catalog" / "versions" / "b" / "v5.json")  # opened for reading, it waits for a writer forever
    before = _state(other)
    with deadline(20), pytest.raises(RemoteError, match="v5.json is not a plain file"):
        other.pull("b", str(url))  # the latest there is v5
    assert _state(other) == before
    with deadline(20):  # its other versions are not held up by it
        assert other.pull("b@v1", str(url)).dst_ref == "b@v1"


def test_huge_manifest_is_refused(source, other, tmp_path: Path) -> None:
    url = _pushed(source, tmp_path, "b")
    man = source.resolve("b").manifest
    _sparse(url / key_of(man))
    before = _state(other)
    with deadline(20), pytest.raises(CorruptObjectError, match=man):
        other.pull("b@v1", str(url))
    assert _state(other) == before


def test_huge_or_fifo_object_is_refused(source, other, models, tmp_path: Path) -> None:
    url = _pushed(source, tmp_path, "b")
    oid = sorted(t.object for _, t in source.manifest("b").tensors() if t.object)[0]
    p = url / key_of(oid)
    good = p.read_bytes()
    _sparse(p)
    before = _state(other)
    with deadline(20), pytest.raises(CorruptObjectError, match=oid):
        other.pull("b@v1", str(url))
    assert _state(other)[1] == before[1]  # no version: objects that checked out may stay, unreferenced
    os.remove(p)
    os.mkfifo(p)
    with deadline(20), pytest.raises(CorruptObjectError, match=f"{oid}.*not a plain file"):
        other.pull("b@v1", str(url))
    assert _state(other)[1] == before[1]
    os.remove(p)
    p.write_bytes(good)  # mended: the pull completes, byte-exact
    other.pull("b@v1", str(url))
    other.checkout("b@v1", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.base) and other.verify().ok


def test_push_to_storage_without_conditional_create(source, tmp_path: Path) -> None:
    """A bare remote numbers versions with create-if-absent; storage without it (fsspec's memory
    filesystem here) is refused before anything is sent, not with a traceback after every object was."""
    import fsspec

    fs = fsspec.filesystem("memory")
    url = f"memory://deltastore-test/{tmp_path.name}"
    try:
        with pytest.raises(RemoteError, match=f"remote {url}.*--db"):
            source.push("b", url)
        assert not fs.exists(f"/deltastore-test/{tmp_path.name}") or fs.find(f"/deltastore-test/{tmp_path.name}") == []
    finally:
        if fs.exists(f"/deltastore-test/{tmp_path.name}"):
            fs.rm(f"/deltastore-test/{tmp_path.name}", recursive=True)


def test_push_replaces_a_damaged_copy_on_the_remote(source, other, models, tmp_path: Path) -> None:
    """A remote holding garbage under an object's name (a torn upload, someone's stray file): a
    push sends its good copy over it instead of publishing a version the remote cannot serve."""
    url = tmp_path / "remote"
    oid = sorted(source.manifest("b").object_ids())[0]
    p = url / key_of(oid)
    p.parent.mkdir(parents=True)
    p.write_bytes(b"garbage")
    r = source.push("b", str(url))
    assert r.objects_present == 0 and r.dst_ref == "b@v1"
    assert p.read_bytes() == (Path(source.backend.root) / key_of(oid)).read_bytes()
    other.pull("b@v1", str(url))
    other.checkout("b@v1", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.base) and other.verify().ok
    assert source.push("b", str(url)).objects_sent == 0  # a good copy there is kept (sizes alike: not read)


def test_many_versions_are_read_once(source, tmp_path: Path) -> None:
    """A bare remote with hundreds of versions of one model: reading each version's chain (what
    pull --all does, one transfer per version) reads each record once, not once per transfer
    (n^2 record GETs: 160,000 here, half a minute on a local disk, hours on S3)."""
    from deltastore.backend import Backend
    from deltastore.transfer import RecordsSide, chain_of

    url = _pushed(source, tmp_path, "b")
    d = url / "catalog" / "versions" / "b"
    rec = json.loads((d / "v1.json").read_text())
    for n in range(2, 401):
        (d / f"v{n}.json").write_text(json.dumps({**rec, "number": n}))
    side = RecordsSide(Backend(str(url), read_only=True), "the remote")
    t0 = time.perf_counter()
    refs = side.refs()
    chains = [chain_of(side, r) for r in refs]
    took = time.perf_counter() - t0
    assert len(refs) == 400 and [c[-1][0].ref for c in chains] == refs
    assert chains[0][0][0].tags == ["prod"] and chains[1][0][0].tags == []  # tags read, and not shared between copies
    assert took < 8, f"{took:.1f} s"


def _renumber(url: Path, model: str, old: int, new: int) -> None:
    d = url / "catalog" / "versions" / model
    rec = json.loads((d / f"v{old}.json").read_text())
    (d / f"v{old}.json").unlink()
    (d / f"v{new}.json").write_text(json.dumps({**rec, "number": new}))


def test_a_huge_version_number_is_not_kept(source, other, models, tmp_path: Path) -> None:
    """A remote's b@v2147483647 pulled as b@v2147483647 left no number for the next add here: its
    record (v2147483648) was one db rebuild and gc refuse. It is pulled under the next free number;
    and a push that would have to number past what a record holds is refused, writing no record."""
    top = 2**31 - 1
    url = _pushed(source, tmp_path, "b")
    d = url / "catalog" / "versions" / "b"
    (d / "v2.json").write_text(json.dumps({**json.loads((d / "v1.json").read_text()), "number": 2}))
    _renumber(url, "b", 1, top)
    assert other.pull(f"b@v{top}", str(url)).dst_ref == "b@v1"
    assert other.add_base("b", models.ft2, message="next").ref == "b@v2"
    rebuilt = deltastore.open(tmp_path / "r", objects_url=str(other.config.home))
    assert rebuilt.rebuild_catalog().versions == 2 and other.gc().unreadable == []
    rebuilt.close()

    versions_before = sorted(p.name for p in d.iterdir())
    with pytest.raises(ConflictError, match=f"no version number left.*v{top}"):
        other.push("b@v2", str(url))  # v2 there is another version; after v2147483647 there is no number
    assert sorted(p.name for p in d.iterdir()) == versions_before


@pytest.mark.parametrize("sql, want", [
    ("update versions set codec_params = '[1, 2]'", "codec_params is not a JSON object"),  # was a ValueError traceback
    ("update tags set name = '../../evil' where name = 'best'", "tag name '../../evil' contains a slash"),
    ("update versions set metrics = '[1]'", "metrics is not a JSON object"),
    ("update versions set metrics = '{\"loss\": NaN}'", "metrics are not JSON: they hold NaN"),  # was committed here
    ("update versions set codec_params = '{\"s\": Infinity}'", "codec_params are not JSON"),
    ("update versions set metrics = '{\"x\": " + "[" * 600 + "]" * 600 + "}'", "metrics nests deeper than 32 levels"),
])
def test_catalog_remote_fields_are_checked(source, other, tmp_path: Path, sql: str, want: str) -> None:
    """A remote with a catalog of its own (a SQLite file someone else writes): what its rows say
    is checked as a bucket's records are, before anything is copied here (a bad tag name was
    found only after the versions were committed, a list for codec_params was a traceback)."""
    import sqlite3

    from deltastore.errors import BadInputError
    from deltastore.remotes import Remote

    db = tmp_path / "team.db"
    team = Remote("team", str(tmp_path / "team"), f"sqlite:///{db}")
    source.push("f@best", team)
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute(sql)
        c.commit()
    before = _state(other)
    with pytest.raises(BadInputError, match=f"remote 'team'.*f@v1 cannot be transferred: {want}"):
        other.pull("f@v1", team)
    assert _state(other) == before


def test_a_record_nested_too_deep_is_refused(source, other, tmp_path: Path) -> None:
    """A remote's record whose metrics nest 600 levels: read, then refused only when re-encoding it
    ran out of Python's stack ("RecursionError: maximum recursion depth exceeded", or a traceback
    where less stack was left). Now one RemoteError naming the record and the field, nothing
    changed here, and the remote's other versions still pull."""
    url = _pushed(source, tmp_path)
    key = url / "catalog" / "versions" / "f" / "v1.json"
    key.write_text(json.dumps(json.loads(key.read_text()) | {"metrics": {"x": json.loads("[" * 600 + "]" * 600)}}))
    before = _state(other)
    with pytest.raises(RemoteError, match="record catalog/versions/f/v1.json is malformed: metrics nests deeper than 32 levels"):
        other.pull("f@v1", str(url))
    assert _state(other) == before
    assert other.pull("b@v1", str(url)).dst_ref == "b@v1"


def test_push_of_a_message_no_record_holds(filled, other, models, tmp_path: Path) -> None:
    """A version whose message is longer than a version's record holds (one an add took before add
    refused such messages, planted here in the catalog's row). A push of it to a bare remote wrote
    a record no reader accepts, after which every pull of that model from the remote failed; a push
    to a remote with a catalog took it, and that catalog's commit wrote the same oversize record
    beside its objects (its `db rebuild` refused it). Both pushes are refused before anything is
    sent, naming the version; each remote stays usable."""
    import sqlite3

    from deltastore.errors import BadInputError
    from deltastore.records import MAX_MESSAGE
    from deltastore.remotes import Remote

    url = tmp_path / "remote"
    filled.push("b", str(url))
    long = filled.add_finetune("b2", models.ft2, base="b", codec="lossless", message="short")
    db = filled.config.db_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("update versions set message = ? where manifest = ?", ("m" * (2 << 20), long.manifest))
        c.commit()
    assert filled.resolve(long.ref).message == "m" * (2 << 20)
    team = tmp_path / "team"
    r = Remote("team", str(team), f"sqlite:///{tmp_path / 'team.db'}")
    for remote, where in ((str(url), url), (r, team)):
        before = sorted(p.relative_to(where) for p in where.rglob("*")) if where.exists() else []
        with pytest.raises(BadInputError, match=f"{long.ref} cannot be transferred: message too long.*at most {MAX_MESSAGE}"):
            filled.push(long.ref, remote)
        assert (sorted(p.relative_to(where) for p in where.rglob("*")) if where.exists() else []) == before
    assert other.pull("b@v1", str(url)).dst_ref == "b@v1"
    filled.push("b@v1", r)
    assert not (team / "catalog" / "versions" / "b2").exists()


def test_pull_of_a_message_no_record_holds(filled, other, models, tmp_path: Path) -> None:
    """A remote with a catalog of its own whose row gives a version a 2 MiB message: a pull checked
    only its first 100 characters and committed it here, writing a local record larger than any
    reader takes (MAX_RECORD), so this store's `db rebuild` then refused it (and gc listed it
    unreadable). Now the pull refuses that version, naming it and the limit, with nothing written
    here; the remote's other versions still pull."""
    import sqlite3

    from deltastore import records
    from deltastore.errors import BadInputError
    from deltastore.remotes import Remote

    r = Remote("team", str(tmp_path / "team"), f"sqlite:///{tmp_path / 'team.db'}")
    long = filled.add_finetune("b2", models.ft2, base="b", codec="lossless", message="short")
    filled.push(long.ref, r)
    filled.push("f@best", r)
    with contextlib.closing(sqlite3.connect(tmp_path / "team.db")) as c:
        c.execute("update versions set message = ? where manifest = ?", ("m" * (2 << 20), long.manifest))
        c.commit()
    before = _state(other)
    with pytest.raises(BadInputError, match=f"remote 'team'.*{long.ref} cannot be transferred: message too long.*"
                                            f"at most {records.MAX_MESSAGE}"):
        other.pull(long.ref, r)
    assert _state(other) == before and not (other.config.home / "catalog" / "versions" / "b2").exists()
    assert other.pull("f@best", r).dst_ref == "f@v1"
    rebuilt = deltastore.open(tmp_path / "rebuilt", objects_url=str(other.config.home))
    assert rebuilt.rebuild_catalog().versions == 2
    rebuilt.close()


def test_push_to_another_home_with_this_stores_urls_in_the_environment(filled, other, models, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """DELTASTORE_DB_URL / DELTASTORE_OBJECTS_URL name this store; they were applied to the other
    home's config too, so a push to that home went to this store ("already there") and nothing
    reached it, and a pull from it read this store."""
    monkeypatch.setenv("DELTASTORE_DB_URL", filled.config.db_url)
    monkeypatch.setenv("DELTASTORE_OBJECTS_URL", filled.config.objects_url)
    home = other.config.home
    r = filled.push("f@best", str(home))
    assert [(m.dst, m.new) for m in r.versions] == [("b@v1", True), ("f@v1", True)] and r.objects_sent > 0
    assert other.resolve("f@best").manifest == filled.resolve("f@best").manifest and other.verify().ok
    other.add_base("solo", models.ft2)  # only there: a pull from that home finds it
    assert filled.pull("solo", str(home)).dst_ref == "solo@v1"
    filled.checkout("solo", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft2)


def test_a_remote_added_by_relative_path_stays_put(source, other, tmp_path: Path, monkeypatch) -> None:
    """`remote add origin ../remote` then a push from another directory: the path was read against
    the directory each command ran in, so the push wrote a new store somewhere else."""
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "here")
    remotes.add_remote(other.config.home, "origin", "../remote")
    assert remotes.load_remotes(other.config.home)["origin"].url == str(tmp_path / "remote")
    source.push("b", str(tmp_path / "remote"))
    monkeypatch.chdir(tmp_path / "elsewhere" / "deeper")
    assert other.pull("b@v1", "origin").dst_ref == "b@v1"
    assert not (tmp_path / "elsewhere" / "remote").exists() and not (tmp_path / "remote" / "remote").exists()


def test_clone_into_the_remote_itself_is_refused(source, tmp_path: Path) -> None:
    """`clone R R` made R a store home with an empty catalog, which every later pull from R then
    read instead of R's records: all its versions vanished for everyone."""
    from deltastore.errors import BadInputError
    from deltastore.store import Store, init_store

    url = _pushed(source, tmp_path, "b")
    before = sorted(p.relative_to(url) for p in url.rglob("*"))
    with pytest.raises(BadInputError, match="clone into a new directory"):
        remotes.clone(str(url), url, store_cls=Store, init=init_store)
    assert sorted(p.relative_to(url) for p in url.rglob("*")) == before
    st, _ = remotes.clone(str(url), tmp_path / "c", store_cls=Store, init=init_store)
    assert st.resolve("b@v1").manifest == source.resolve("b@v1").manifest  # fetched on first use
    st.close()


def test_oversized_record_and_object_on_s3(s3, source, other, tmp_path: Path) -> None:
    """The same bounds on SeaweedFS S3: one ranged GET of at most what a record may hold, and
    a damaged copy under an object's name replaced by a push, not trusted."""
    from deltastore.backend import Backend

    url = f"s3://deltastore/{tmp_path.name}"
    source.push("b", url)
    b = Backend(url)
    b.put("catalog/versions/b/v7.json", b"{" + b" " * (2 << 20) + b"}")
    before = _state(other)
    with deadline(30), pytest.raises(RemoteError, match="catalog/versions/b/v7.json holds more than"):
        other.pull("b", url)  # the latest there is v7
    assert _state(other) == before
    b.delete("catalog/versions/b/v7.json")
    assert other.pull("b@v1", url).dst_ref == "b@v1"

    url2 = f"{url}-2"
    oid = sorted(source.manifest("b").object_ids())[0]
    Backend(url2).put(key_of(oid), b"garbage")
    assert source.push("b", url2).objects_present == 0  # the damaged copy was read, found bad, and replaced
    third = deltastore.open(tmp_path / "third")
    assert third.pull("b@v1", url2).dst_ref == "b@v1" and third.verify().ok
    third.close()


@pytest.mark.parametrize("digits", ["\u0661", "\U0001d7d9", "\u00b2"])
def test_a_stray_file_named_in_other_digits_is_not_a_record(source, other, models, tmp_path: Path, digits: str) -> None:
    """A stray file in a bare remote's record folder named v<non-ASCII digits>.json ('v\u0661.json':
    Arabic-Indic one; a copy of v1's record, as a tool that renamed it would leave): str.isdigit
    took the name for a record's, whose name then did not match what it held, so every pull of the
    model was a RemoteError. No record is named so (a version number is written in ASCII digits,
    as a REF's is): it is skipped like any other file there, and the model's versions pull whole."""
    url = _pushed(source, tmp_path)
    d = url / "catalog" / "versions" / "f"
    (d / f"v{digits}.json").write_bytes((d / "v1.json").read_bytes())
    r = other.pull("f@v1", str(url))
    assert [(m.dst, m.new) for m in r.versions] == [("b@v1", True), ("f@v1", True)]
    assert [x.dst_ref for x in remotes.pull(other, "f", str(url), all_versions=True)] == ["f@v1"]
    other.checkout("f@best", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft) and other.verify().ok


def _chain(home: Path, tmp_path: Path, links: int) -> deltastore.Store:
    """A store holding b@v1 and c1@v1 .. c<links>@v1, each a lossless fine-tune of the one before
    (c1 of b): c<k>@v1 is k base links from its root. Tiny models, bits alternating between two."""
    from ..conftest import finetune_of, llama_like, write_model

    sd = llama_like(0, hidden=8, layers=1, vocab=8)
    dirs = [write_model(tmp_path / "chain-b", sd), write_model(tmp_path / "chain-f", finetune_of(sd))]
    st = deltastore.open(home)
    st.add_base("b", dirs[0])
    for k in range(1, links + 1):
        st.add_finetune(f"c{k}", dirs[k % 2], base="b" if k == 1 else f"c{k - 1}", codec="lossless")
    return st


def test_a_base_chain_deeper_than_the_limit_is_not_pulled(other, tmp_path: Path, monkeypatch) -> None:
    """A remote's version whose base chain is deeper than chains.MAX_BASE_CHAIN (5 here, 500 in
    use), which no checkout rebuilds a tensor through: a pull (or a push) took it, chain and all,
    and only a checkout here then said the chain was too deep. Now the transfer refuses it up
    front (its walk of the chain reads the manifests anyway), ChainTooDeepError naming the
    version, nothing written here; the version at the limit still pulls and checks out exact."""
    from deltastore import chains
    from deltastore.errors import ChainTooDeepError

    src = _chain(tmp_path / "src", tmp_path, 6)
    url = tmp_path / "remote"
    src.push("c6", str(url))  # at the real limit: a chain of 6 is fine
    monkeypatch.setattr(chains, "MAX_BASE_CHAIN", 5)
    before = _state(other)
    with pytest.raises(ChainTooDeepError, match=f"^remote {url}: c6@v1's base chain is deeper than the limit of 5 "
                                                "versions that deltastore rebuilds tensors through; it is not transferred"):
        other.pull("c6", str(url))
    assert _state(other) == before
    with pytest.raises(ChainTooDeepError, match="the local store: c6@v1's base chain is deeper than the limit of 5"):
        src.push("c6@v1", str(tmp_path / "remote2"))
    assert not (tmp_path / "remote2").exists()
    assert other.pull("c5", str(url)).dst_ref == "c5@v1"
    other.checkout("c5@v1", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(tmp_path / "chain-f")
    src.close()
