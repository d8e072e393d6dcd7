"""``pull --all`` from a remote whose records are untrusted: a version the remote holds badly (a
record with NaN or infinite metrics, metrics larger than a record holds beside its message, a
record that does not parse, a base chain too deep) is refused on its own, named with its reason;
every other version is pulled; nothing of the refused one is left here (no catalog row, no record,
no object gc would have to find); and the command's exit status says not everything came."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import deltastore
from deltastore import records, remotes
from deltastore.errors import PullRefusedError, RemoteError

from ..cli.test_cli import run
from ..conftest import tree_hashes
from .test_untrusted import _chain


@pytest.fixture(scope="module")
def three(source, models, tmp_path_factory) -> Path:
    """A bare remote holding b@v1 (prod), f@v1 (best, a fine-tune of b) and f@v2 (another fine-tune
    of b): pull --all moves them in that order, so f@v1 is the middle one. Tests copy it."""
    source.add_finetune("f", models.ft2, base="b", codec="lossless", message="second")
    url = tmp_path_factory.mktemp("three") / "remote"
    source.push_versions(None, str(url))
    return url


def _plant(three: Path, tmp_path: Path, **fields) -> Path:
    """A copy of ``three`` whose f@v1 record has ``fields`` written over it, as someone with write
    access to the bucket would leave it (Python's json writes NaN and Infinity)."""
    url = tmp_path / "remote"
    shutil.copytree(three, url)
    key = url / "catalog" / "versions" / "f" / "v1.json"
    key.write_text(json.dumps(json.loads(key.read_text()) | fields))
    return url


HOSTILE = {
    # (refused as the record is read: records.parse_version; transfer's check_info says the same of a catalog's row)
    "nan metrics": ({"metrics": {"loss": float("nan")}}, "record catalog/versions/f/v1.json is malformed: metrics are not JSON: they hold NaN"),
    "inf metrics": ({"metrics": {"acc": float("inf"), "n": 3}}, "record catalog/versions/f/v1.json is malformed: metrics are not JSON"),
    "nan codec_params": ({"codec_params": {"scale": float("-inf")}}, "record catalog/versions/f/v1.json is malformed: codec_params are not JSON"),
    # a record every reader takes (under MAX_RECORD), but metrics add would refuse beside the message
    "oversize metrics": ({"metrics": {"log": "m" * records.MAX_MESSAGE}}, "f@v1 cannot be transferred: metrics too large"),
    "unparseable record": ({"metrics": {"x": json.loads("[" * 600 + "]" * 600)}},
                           "record catalog/versions/f/v1.json is malformed: metrics nests deeper than 32 levels"),
    "bad base name": ({"base": "../b@v1"}, "record catalog/versions/f/v1.json is malformed: base model name"),
}


def _pulled_two(st: deltastore.Store, models, tmp_path: Path) -> None:
    """``st`` holds b@v1 and f@v2 (its number kept), exact, and nothing of the remote's f@v1: no
    version, no record beside the objects, no object only it needs; gc finds nothing to remove,
    verify and a rebuild from the records agree."""
    assert [(v.ref, v.message, v.tags) for m in st.models() for v in st.versions(m.name)] == [
        ("b@v1", "the base", ["prod"]), ("f@v2", "second", [])]
    st.checkout("f@v2", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft2)
    assert not (Path(st.config.home) / "catalog" / "versions" / "f" / "v1.json").exists()
    gc = st.gc()
    assert (gc.deleted, gc.unreadable) == (0, [])
    assert st.verify().ok


@pytest.mark.parametrize("fields, why", list(HOSTILE.values()), ids=list(HOSTILE))
def test_pull_all_skips_a_hostile_version(three, other, models, tmp_path: Path, fields: dict, why: str) -> None:
    """The middle one of three versions is hostile. A NaN metric was pulled into this catalog and
    its record (PostgreSQL's commit refused it: test_pull_all_on_postgres); an unparseable record
    failed the listing of the whole remote, so pull --all pulled nothing. Now that one version is
    refused, named with its reason, and the other two are pulled."""
    url = _plant(three, tmp_path, **fields)
    with pytest.raises(PullRefusedError) as e:
        remotes.pull(other, None, str(url), all_versions=True)
    assert [r.dst_ref for r in e.value.results] == ["b@v1", "f@v2"]
    assert [x for x, _ in e.value.refused] == ["f@v1"] and why in e.value.refused[0][1]
    assert f"1 of 3 versions on remote {url} were not pulled: f@v1: " in str(e.value)
    _pulled_two(other, models, tmp_path)
    # asked for by name, it is still the one clear error it was; its neighbours pull alone
    with pytest.raises((RemoteError, ValueError), match=why.replace("[", r"\[")):
        other.pull("f@best", str(url))
    assert other.pull("f@v2", str(url)).versions[-1].new is False


def test_pull_all_through_the_cli(three, models, tmp_path: Path) -> None:
    """`deltastore pull --all REMOTE`: the pulled versions on stdout as ever, one error line on
    stderr for the refused one (its name and reason, no traceback), exit status 1; the store is
    usable and clean after (gc, verify)."""
    url = _plant(three, tmp_path, metrics={"loss": float("nan")})
    home = tmp_path / "home"
    run(home, "init")
    run(home, "remote", "add", "team", str(url))
    p = run(home, "pull", "--all", "team", ok=False)
    assert p.returncode == 1, p.stderr
    assert "pulled b@v1 from team as b@v1" in p.stdout and "pulled f@v2 from team as f@v2" in p.stdout
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("deltastore: error: f@v1 not pulled: remote 'team'")
    assert "metrics are not JSON" in p.stderr
    assert [v["number"] for v in json.loads(run(home, "log", "f", "--json").stdout)] == [2]
    p = run(home, "pull", "--all", "team", "--json", ok=False)  # again: nothing new, the same refusal
    assert p.returncode == 1 and [r["dst_ref"] for r in json.loads(p.stdout)] == ["b@v1", "f@v2"]
    assert p.stderr.count("\n") == 1 and "f@v1 not pulled" in p.stderr
    run(home, "gc")
    run(home, "verify")
    with deltastore.open_store(home) as st:
        _pulled_two(st, models, tmp_path)
    # nothing refused: exit status 0
    shutil.copy(three / "catalog" / "versions" / "f" / "v1.json", url / "catalog" / "versions" / "f" / "v1.json")
    p = run(home, "pull", "--all", "team")
    assert "pulled f@v1 from team as f@v1" in p.stdout and p.stderr == ""


def test_a_hostile_row_in_a_catalog_remote(three, source, other, models, tmp_path: Path) -> None:
    """A remote with a catalog of its own (SQLite someone else writes) whose row gives f@v1 NaN
    metrics: Python's json read it back as NaN and the pull committed it here. Refused alone."""
    import contextlib
    import sqlite3

    from deltastore.remotes import Remote

    team = Remote("team", str(tmp_path / "team"), f"sqlite:///{tmp_path / 'team.db'}")
    source.push_versions(None, team)  # b@v1, f@v1, f@v2, as in ``three``
    with contextlib.closing(sqlite3.connect(tmp_path / "team.db")) as c:
        c.execute("""update versions set metrics = '{"loss": NaN}' where number = 1 and model_id =
                     (select id from models where name = 'f')""")
        c.commit()
    with pytest.raises(PullRefusedError) as e:
        other.pull_versions(None, team)
    assert [r.dst_ref for r in e.value.results] == ["b@v1", "f@v2"]
    assert e.value.refused[0][0] == "f@v1" and "metrics are not JSON" in e.value.refused[0][1]
    _pulled_two(other, models, tmp_path)


def test_pull_all_on_postgres(pg, three, models, tmp_path: Path) -> None:
    """This store's catalog on PostgreSQL, whose JSON type has no NaN: the hostile version failed
    the commit (a driver error after its objects were copied) and ended the pull. Now refused
    before anything moves, and the rest pulled."""
    url = _plant(three, tmp_path, metrics={"loss": float("nan")})
    st = deltastore.open(tmp_path / "home", db_url=pg.create_db("pullall"))
    try:
        with pytest.raises(PullRefusedError, match="f@v1: .*metrics are not JSON"):
            st.pull_versions(None, str(url))
        _pulled_two(st, models, tmp_path)
    finally:
        st.close()


#: the versions of _chain(..., 7) within a base chain limit of 5 (c6 and c7 are deeper)
WITHIN_5 = ["b@v1"] + [f"c{k}@v1" for k in range(1, 6)]


def _refused_too_deep(err) -> None:  # noqa: ANN001 (a TransferRefusedError)
    """c6 and c7, and no other, refused for their chain's depth (chains.MAX_BASE_CHAIN at 5)."""
    assert [x for x, _ in err.refused] == ["c6@v1", "c7@v1"]
    assert all("base chain is deeper than the limit of 5" in why for _, why in err.refused)


def test_pull_all_refuses_only_the_chain_too_deep(other, tmp_path: Path, monkeypatch) -> None:
    """Versions whose base chain is deeper than chains.MAX_BASE_CHAIN (5 here): each is refused
    (ChainTooDeepError's line), and every one within the limit is pulled."""
    from deltastore import chains

    src = _chain(tmp_path / "src", tmp_path, 7)
    url = tmp_path / "remote"
    src.push_versions(None, str(url))
    src.close()
    monkeypatch.setattr(chains, "MAX_BASE_CHAIN", 5)
    with pytest.raises(PullRefusedError) as e:
        other.pull_versions(None, str(url))
    assert [r.dst_ref for r in e.value.results] == WITHIN_5
    _refused_too_deep(e.value)
    assert (other.gc().deleted, other.verify().ok) == (0, True)


def test_unreadable_records_refuse_only_their_version(three, other, models, tmp_path: Path) -> None:
    """A record file too large to be one, and a FIFO named like one (read, it would block): each
    failed the listing of its whole model (every pull of f, and pull --all of everything). Now each
    is its own version's refusal; `pull f` (the latest, v9) says why rather than pulling an older
    version in its place; stray names no record has (v0, v007, past 2^31) are not read at all."""
    import os

    from .test_untrusted import _sparse, deadline

    url = tmp_path / "remote"
    shutil.copytree(three, url)
    d = url / "catalog" / "versions" / "f"
    _sparse(d / "v7.json")
    os.mkfifo(d / "v9.json")
    for stray in ("v0.json", "v007.json", "v2147483648.json"):
        (d / stray).write_text("{")
    with deadline(30), pytest.raises(PullRefusedError) as e:
        other.pull_versions(None, str(url))
    assert [r.dst_ref for r in e.value.results] == ["b@v1", "f@v1", "f@v2"]
    assert e.value.refused == [("f@v7", e.value.refused[0][1]), ("f@v9", e.value.refused[1][1])]
    assert "catalog/versions/f/v7.json holds" in e.value.refused[0][1]
    assert "catalog/versions/f/v9.json is not a plain file" in e.value.refused[1][1]
    with deadline(30), pytest.raises(RemoteError, match="v9.json is not a plain file"):
        other.pull("f", str(url))
    os.remove(d / "v9.json")
    with deadline(30), pytest.raises(RemoteError, match="v7.json holds"):
        other.pull("f", str(url))
    assert other.gc().deleted == 0 and other.verify().ok
    # a push to that remote takes no number an unreadable record holds (its v3 here): the next one
    from ..conftest import finetune_of, llama_like, write_model

    os.rename(d / "v7.json", d / "v3.json")
    other.add_finetune("f", write_model(tmp_path / "ft3", finetune_of(llama_like(0), seed=3)), base="b",
                       codec="lossless", message="third")
    assert other.push("f@v3", str(url)).dst_ref == "f@v4"
    assert d.joinpath("v3.json").stat().st_size == 1 << 40


def test_push_all_refuses_only_the_chain_too_deep(other, tmp_path: Path, monkeypatch) -> None:
    """A push of many refuses version by version too: with chains.MAX_BASE_CHAIN at 5, c6 and c7
    are named (PushRefusedError) and every other version is on the remote, which pulls cleanly."""
    from deltastore import chains
    from deltastore.errors import PushRefusedError

    src = _chain(tmp_path / "src", tmp_path, 7)
    url = tmp_path / "remote"
    monkeypatch.setattr(chains, "MAX_BASE_CHAIN", 5)
    with pytest.raises(PushRefusedError) as e:
        src.push_versions(None, str(url))
    assert [r.ref for r in e.value.results] == WITHIN_5
    _refused_too_deep(e.value)
    assert f"2 of 8 versions were not pushed to remote {url}: c6@v1: " in str(e.value)
    src.close()
    got = other.pull_versions(None, str(url))  # what was pushed is whole: every version pulls
    assert sorted(r.dst_ref for r in got) == sorted(WITHIN_5)
    assert (other.gc().deleted, other.verify().ok) == (0, True)


def test_push_all_through_the_cli(tmp_path: Path, monkeypatch) -> None:
    """`deltastore push --all REMOTE` with a version it must refuse: the pushed ones on stdout, one
    error line for the refused one, no traceback, exit 1."""
    from deltastore import chains

    src = _chain(tmp_path / "home", tmp_path, 3)
    src.close()
    url = tmp_path / "remote"
    home = tmp_path / "home"
    run(home, "remote", "add", "team", str(url))
    monkeypatch.setattr(chains, "MAX_BASE_CHAIN", 2)  # the CLI runs in this process
    p = run(home, "push", "--all", "team", ok=False)
    assert p.returncode == 1, p.stderr
    assert "pushed b@v1 to team" in p.stdout and "pushed c2@v1 to team" in p.stdout
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("deltastore: error: c3@v1 not pushed:") and "deeper than the limit of 2" in p.stderr


def test_an_unreadable_tag_record_refuses_only_its_tag(three, other, models, tmp_path: Path) -> None:
    """A tag record on the bucket that does not parse failed every resolve of its model (each
    version's tags are read with it): no version of f could be pulled, nor pull --all. Now that
    record is left out of the model's tags: every version comes (f@v1 without the tag), and only
    a pull by that tag is refused, naming the record."""
    url = tmp_path / "remote"
    shutil.copytree(three, url)
    (url / records.tag_key("f", "best")).write_text("{")
    results = other.pull_versions(None, str(url))
    assert [r.dst_ref for r in results] == ["b@v1", "f@v1", "f@v2"]
    assert other.resolve("b@v1").tags == ["prod"] and other.resolve("f@v1").tags == []
    with pytest.raises(RemoteError, match="record catalog/tags/f/best.json is malformed: not JSON"):
        other.pull("f@best", str(url))
    other.checkout("f@v1", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft)
    assert (other.gc().deleted, other.verify().ok) == (0, True)
