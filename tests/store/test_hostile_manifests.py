"""A manifest planted in a shared bucket (and a catalog row naming it) is refused with one store
error naming what is wrong, before anything is written: never a raw OverflowError or OSError,
never a half-written checkout folder, nothing outside OUT."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from deltastore.errors import CorruptObjectError

from ..conftest import llama_like, point_at, write_model


@pytest.fixture
def planted(store, tmp_path: Path):
    """A store with one base, and ``plant(manifest dict)``: that manifest as an object, named by
    the base's catalog row, as anyone with write access to the bucket and catalog could do."""
    store.add_base("b", write_model(tmp_path / "b", llama_like(0, hidden=16, layers=1)))
    good = json.loads(store.objects.get(store.resolve("b").manifest))

    def plant(man: dict) -> str:
        return point_at(store, "b", man)

    return store, good, plant


def files_under(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_a_rel_error_too_large_for_a_float_is_a_corrupt_manifest(planted, tmp_path: Path) -> None:
    """JSON integers have no bound: one of 400 digits used to raise OverflowError from float()."""
    store, good, plant = planted
    man = copy.deepcopy(good)
    man["files"][1]["tensors"][0]["rel_error"] = 10**400
    plant(man)
    before = files_under(tmp_path)
    for op in (lambda: store.checkout("b", tmp_path / "out"), lambda: store.state_dict("b"), lambda: store.verify("b")):
        try:
            got = op()
        except CorruptObjectError as e:
            assert "rel_error" in str(e)
        else:  # verify reports instead of raising
            assert not got.ok and "rel_error" in got.problems[0].what
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("first", [True, False])
def test_a_file_that_is_also_a_folder_is_refused_before_writing(planted, tmp_path: Path, first: bool) -> None:
    """"config.json" and "config.json/x" in one manifest: checkout used to write one, then fail
    with a raw FileExistsError or IsADirectoryError, leaving a half-written folder."""
    store, good, plant = planted
    man = copy.deepcopy(good)
    other = copy.deepcopy(man["files"][0]) | {"path": "config.json/x"}
    man["files"].insert(0 if first else 1, other)
    plant(man)
    out = tmp_path / "out"
    with pytest.raises(CorruptObjectError, match="'config.json' is a file and the folder of 'config.json/x'"):
        store.checkout("b", out)
    assert not out.exists()


def test_deep_folders_are_checked_without_quadratic_work(planted) -> None:
    """The folder check reads each path once (sorted), however deep: 20,000 files 1,000 folders
    deep parse, and one of them that is also a folder is still found."""
    from deltastore.manifest import Manifest

    _, good, _ = planted
    man = copy.deepcopy(good)
    blob = man["files"][0]
    deep = "/".join(["d"] * 1000)
    man["files"] = [blob | {"path": f"{deep}/f{i}"} for i in range(20_000)]
    Manifest.from_json(json.dumps(man).encode())
    man["files"].append(blob | {"path": f"{deep}/f7/x"})
    with pytest.raises(CorruptObjectError, match="is a file and the folder of"):
        Manifest.from_json(json.dumps(man).encode())



@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e308, 10**300])
def test_a_rel_error_a_float_holds_still_reads(planted, value: float) -> None:
    """Every float a manifest could hold before the bound on integers (NaN and Infinity included,
    which json writes) still reads."""
    from deltastore.manifest import Manifest

    _, good, _ = planted
    man = copy.deepcopy(good)
    man["files"][1]["tensors"][0]["rel_error"] = value
    got = Manifest.from_json(json.dumps(man).encode()).files[1].tensors[0].rel_error
    assert got == float(value) or (got != got and value != value)


@pytest.mark.parametrize("field", ["object", "sha256"])
def test_an_id_with_a_trailing_newline_is_a_corrupt_manifest(planted, tmp_path: Path, field: str) -> None:
    """Python's '$' also matches before a final newline: an object id (or sha256) ending in '\\n'
    passed the manifest's checks, and checkout and verify then failed with a raw ValueError from
    the object store's id parser."""
    store, good, plant = planted
    man = copy.deepcopy(good)
    man["files"][0][field] += "\n"
    plant(man)
    with pytest.raises(CorruptObjectError, match=f"{field} is not"):
        store.checkout("b", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    rep = store.verify("b")
    assert not rep.ok and "manifest unreadable" in rep.problems[0].what


def test_a_file_name_longer_than_any_file_system_takes_is_refused_before_writing(planted, tmp_path: Path) -> None:
    """A path part of 2,000 characters (a manifest allowed 4,096 for the whole path): checkout
    wrote the version's other files, then failed on it with a raw OSError (File name too long).
    No file system takes a name past 255 characters, so no add can have stored one."""
    from deltastore.manifest import Manifest

    store, good, plant = planted
    man = copy.deepcopy(good)
    man["files"].append(copy.deepcopy(man["files"][0]) | {"path": "sub/" + "z" * 2000})
    plant(man)
    out = tmp_path / "out"
    with pytest.raises(CorruptObjectError, match="longer than 255"):
        store.checkout("b", out)
    assert not out.exists()
    man["files"][-1]["path"] = "sub/" + "é" * 255  # 255 characters: what a file system may hold
    Manifest.from_json(json.dumps(man).encode())


def test_a_bad_manifest_read_through_the_store_is_named_by_its_id(planted, tmp_path: Path) -> None:
    """Store.manifest parsed without passing the id, so every error about a planted manifest read
    through it (checkout, state_dict, tensor, show, an add on it) said 'object (manifest) is
    corrupt', leaving the user to find which of the bucket's manifests it was. Now each names it."""
    from tests.clirun import cli

    store, good, plant = planted
    man = copy.deepcopy(good)
    man["files"][1]["tensors"][0]["dtype"] = "F99"
    oid = plant(man)
    want = f"object {oid} is corrupt: not a valid manifest: .*unknown dtype 'F99'"
    for op in (lambda: store.manifest("b"), lambda: store.checkout("b", tmp_path / "out"), lambda: store.state_dict("b"),
               lambda: store.tensor("b", "model.norm.weight"),
               lambda: store.add_finetune("f", tmp_path / "b", base="b", codec="lossless")):
        with pytest.raises(CorruptObjectError, match=want):
            op()
        store._manifest_cache.clear()
    assert not (tmp_path / "out").exists() and [m.name for m in store.models()] == ["b"]
    p = cli("show", "b", "--home", str(store.config.home))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "Traceback" not in p.stdout + p.stderr
    assert lines[0].startswith(f"deltastore: error: object {oid} is corrupt: not a valid manifest")
