"""A flipped byte, a truncated object, a deleted object, an empty object: ``verify`` names each
object and every version it breaks (descendants too); checkout of a broken version fails with a
store error and never leaves a file with wrong bytes; versions it does not touch still check out
exact; and an add of the same content replaces a torn object instead of reusing it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deltastore
from deltastore.errors import CorruptObjectError, ObjectMissingError
from deltastore.objects import key_of

from ..conftest import tree_hashes
from .common import make_sources


def damage(path: Path, how: str) -> None:
    os.chmod(path, 0o644)
    data = path.read_bytes()
    if how == "flip":
        i = len(data) // 2 + 3
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1 :])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "delete":
        path.unlink()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("corrupt")
    src = make_sources(d / "src")
    with deltastore.open(d / "home") as st:
        st.add_base("b", src / "base0", message="base0")
        st.add_finetune("f", src / "ft0", "b", codec="lossless", message="ft0")
        st.add_base("c", src / "base1", message="base1")
    return d / "home", src


def target_of(st: deltastore.Store, which: str) -> tuple[str, set[str]]:
    """An object to damage, and the versions that need it."""
    if which == "tensor":
        return next(t.object for _, t in st.manifest("c@v1").tensors()), {"c@v1"}
    if which == "delta":
        return next(t.object for _, t in st.manifest("f@v1").tensors() if t.source == "delta"), {"f@v1"}
    if which == "manifest":
        return st.resolve("f@v1").manifest, {"f@v1"}
    if which == "base-tensor":  # a base's tensor breaks its fine-tunes too
        return next(t.object for _, t in st.manifest("b@v1").tensors()), {"b@v1", "f@v1"}
    raise AssertionError(which)


@pytest.mark.parametrize("how", ["flip", "truncate", "delete", "empty"])
@pytest.mark.parametrize("which", ["tensor", "delta", "manifest", "base-tensor"])
def test_damage_is_named_and_never_checked_out(template, tmp_path: Path, which: str, how: str) -> None:
    home, src = tmp_path / "home", template[1]
    shutil.copytree(template[0], home)
    (home / "config.toml").write_text((home / "config.toml").read_text().replace(str(template[0]), str(home)))
    with deltastore.open(home) as st:
        oid, broken = target_of(st, which)
        damage(home / key_of(oid), how)
        st._manifest_cache.clear()
        rep = st.verify()
        assert not rep.ok
        named = [p for p in rep.problems if p.oid == oid]
        assert named, rep.problems
        assert all(set(p.versions) == broken for p in named), named
        assert ("missing" if how == "delete" else "corrupt") in named[0].what
        assert {v for p in rep.problems for v in p.versions} == broken
        sources = {"b@v1": "base0", "f@v1": "ft0", "c@v1": "base1"}
        for ref, name in sources.items():
            out = tmp_path / f"out-{ref}"
            if ref in broken:
                with pytest.raises((CorruptObjectError, ObjectMissingError)):
                    st.checkout(ref, out)
                want = tree_hashes(src / name)
                for rel, h in (tree_hashes(out).items() if out.exists() else ()):
                    assert want.get(rel) == h, f"{ref}: {rel} was written with wrong bytes"
            else:
                st.checkout(ref, out)
                assert tree_hashes(out) == tree_hashes(src / name)


@pytest.mark.parametrize("how", ["truncate", "delete", "empty"])
def test_an_add_replaces_a_torn_object(template, tmp_path: Path, how: str) -> None:
    home, src = tmp_path / "home", template[1]
    shutil.copytree(template[0], home)
    (home / "config.toml").write_text((home / "config.toml").read_text().replace(str(template[0]), str(home)))
    with deltastore.open(home) as st:
        oid, _ = target_of(st, "tensor")
        damage(home / key_of(oid), how)
        assert not st.verify().ok
        st.add_base("c", src / "base1", message="base1")  # the same bytes again: the torn copy is not reused
        assert st.verify().ok
        st.checkout("c@v1", tmp_path / "out")
        assert tree_hashes(tmp_path / "out") == tree_hashes(src / "base1")


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_an_add_on_a_damaged_chain_names_the_link_and_adds_nothing(template, tmp_path: Path, how: str) -> None:
    """A series add decodes its base through the chain checking only the top of it against its sha256
    (as a checkout does); a damaged link below is still found and named, and nothing is added."""
    home, src = tmp_path / "home", template[1]
    shutil.copytree(template[0], home)
    (home / "config.toml").write_text((home / "config.toml").read_text().replace(str(template[0]), str(home)))
    with deltastore.open(home) as st:
        st.add_finetune("f", src / "ft1", "f", codec="lossless", message="ft1")  # f@v2: a delta on f@v1
        assert any(t.source == "delta" for _, t in st.manifest("f@v2").tensors())
        oid, _ = target_of(st, "delta")  # f@v1's delta, a link below f@v2
        damage(home / key_of(oid), how)
        st._manifest_cache.clear()
        with pytest.raises(CorruptObjectError) as e:
            st.add_finetune("f", src / "ft0", "f", codec="lossless", message="ft0 again")
        assert e.value.oid == oid
        assert [v.ref for v in st.versions("f")] == ["f@v1", "f@v2"]


def _rewrite_one_tensor(src: Path, dst: Path) -> None:
    """A copy of model dir ``src`` whose first safetensors file has one byte of its last tensor changed
    (the header, and so every name, shape and offset, the same)."""
    shutil.copytree(src, dst)
    f = next(p for p in sorted(dst.iterdir()) if p.suffix == ".safetensors")
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01
    f.write_bytes(bytes(data))


def test_base_from_reads_the_base_from_its_files_and_trusts_no_byte_of_them(template, tmp_path: Path) -> None:
    """add_finetune(base_from=DIR): the base's tensors come from DIR where they hash to the sha256 the
    store recorded (an add whose base chain has a damaged link goes through: the chain was not read;
    once the link is mended the new version checks out exact); files of another model, or one tensor changed, are not used for what does
    not match (with a damaged chain: the link is named and nothing is added)."""
    home, src = tmp_path / "home", template[1]
    shutil.copytree(template[0], home)
    (home / "config.toml").write_text((home / "config.toml").read_text().replace(str(template[0]), str(home)))
    with deltastore.open(home) as st:
        st.add_finetune("f", src / "ft1", "f", codec="lossless", message="ft1")  # f@v2 on f@v1
        # an intact chain, one base tensor changed in the files given: that one decoded, the add exact
        _rewrite_one_tensor(src / "ft1", tmp_path / "ft1-touched")
        st.add_finetune("g", src / "ft0", "f@v2", codec="lossless", base_from=tmp_path / "ft1-touched")
        st.checkout("g@v1", tmp_path / "out-g")
        assert tree_hashes(tmp_path / "out-g") == tree_hashes(src / "ft0")
        oid, _ = target_of(st, "delta")  # f@v1's delta, under f@v2
        good = (home / key_of(oid)).read_bytes()
        damage(home / key_of(oid), "flip")
        st._manifest_cache.clear()
        for wrong in (src / "ft0", src / "base1"):  # another checkpoint's files; another model's (other shapes)
            with pytest.raises(CorruptObjectError) as e:
                st.add_finetune("f", src / "ft0", "f", codec="lossless", base_from=wrong)
            assert e.value.oid == oid
        assert [v.ref for v in st.versions("f")] == ["f@v1", "f@v2"]
        v = st.add_finetune("f", src / "ft0", "f", codec="lossless", message="ft0 again", base_from=src / "ft1")
        assert v.ref == "f@v3"
        (home / key_of(oid)).write_bytes(good)  # the link mended: f@v3's own delta was made right
        st.checkout("f@v3", tmp_path / "out")
        assert tree_hashes(tmp_path / "out") == tree_hashes(src / "ft0")


def test_base_from_on_the_command_line(template, tmp_path: Path) -> None:
    """`deltastore add finetune ... --base-from DIR`: the base's own files, no warning; another model's: the
    add all the same, with a warning; a DIR that is no model: one line, exit 1, nothing added."""
    from ..clirun import cli

    home, src = tmp_path / "home", template[1]
    shutil.copytree(template[0], home)
    (home / "config.toml").write_text((home / "config.toml").read_text().replace(str(template[0]), str(home)))
    p = cli("--home", str(home), "add", "finetune", "f", str(src / "ft1"), "--base", "f", "--codec", "lossless",
            "--base-from", str(src / "ft0"))
    assert p.returncode == 0 and "WARNING" not in p.stderr, p.stderr
    # files of no use (another model's): the add as without them, and a warning on stderr says so (a process
    # of its own: in this one pytest's log handlers would take the line)
    exe = Path(sys.executable).with_name("deltastore")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "deltastore.cli"]
    p = subprocess.run([*cmd, "--home", str(home), "add", "finetune", "g", str(src / "ft1"), "--base", "f@v1", "--codec",
                        "lossless", "--base-from", str(src / "base1")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "--base-from" in p.stderr and "were not there with the base's bytes" in p.stderr, p.stderr
    (tmp_path / "empty").mkdir()
    p = cli("--home", str(home), "add", "finetune", "f", str(src / "ft0"), "--base", "f", "--codec", "lossless",
            "--base-from", str(tmp_path / "empty"))
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    with deltastore.open(home) as st:
        assert [v.ref for v in st.versions("f")] == ["f@v1", "f@v2"]
        for ref in ("f@v2", "g@v1"):
            st.checkout(ref, tmp_path / ref)
            assert tree_hashes(tmp_path / ref) == tree_hashes(src / "ft1")
