"""verify --repair: missing and corrupt objects come back from a remote whose copy hashes right;
a remote whose copy is corrupt too is named and not used."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from deltastore import remotes
from deltastore.objects import key_of


def _flip(p: Path) -> None:
    os.chmod(p, stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x5A
    p.write_bytes(bytes(data))


def _tensor_oids(st, ref: str) -> list[str]:
    return sorted({t.object for _, t in st.manifest(ref).tensors() if t.object})


def test_repair_restores_corrupt_and_deleted(filled, tmp_path: Path) -> None:
    remotes.add_remote(filled.config.home, "origin", str(tmp_path / "remote"))
    filled.push("f")
    home = Path(filled.backend.root)
    a, b = _tensor_oids(filled, "f")[:2]
    c = _tensor_oids(filled, "b")[0]
    _flip(home / key_of(a))
    (home / key_of(b)).unlink()
    _flip(home / key_of(c))  # a base's object: it breaks the fine-tune too
    bad = filled.verify()
    assert {p.oid for p in bad.problems} == {a, b, c}

    rep = remotes.repair(filled, ["origin"])
    assert rep.ok and sorted(x.oid for x in rep.repaired) == sorted([a, b, c])
    assert all(x.fixed_from == "origin" for x in rep.repaired)
    assert filled.verify().ok
    assert remotes.repair(filled, ["origin"]).repairs == []  # nothing left to do


def test_a_corrupt_remote_copy_is_named_not_used(filled, tmp_path: Path) -> None:
    remotes.add_remote(filled.config.home, "bad", str(tmp_path / "r1"))
    remotes.add_remote(filled.config.home, "good", str(tmp_path / "r2"))
    filled.push("f", "bad")
    filled.push("f", "good")
    oid = _tensor_oids(filled, "f")[0]
    local = Path(filled.backend.root) / key_of(oid)
    _flip(local)
    _flip(tmp_path / "r1" / key_of(oid))
    broken = local.read_bytes()

    only_bad = remotes.repair(filled, ["bad"])
    assert not only_bad.ok
    [x] = only_bad.unrepaired
    assert x.oid == oid and "remote 'bad'" in x.notes[0] and "corrupt too" in x.notes[0]
    assert local.read_bytes() == broken  # the bad copy was not used

    both = remotes.repair(filled, ["bad", "good"])
    assert both.ok and both.repaired[0].fixed_from == "good"
    assert filled.verify().ok
