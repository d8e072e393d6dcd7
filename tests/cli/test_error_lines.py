"""Every error the store raises reaches the user as one line and exit status 1: damaged objects of
each kind, a damaged config file, a schema from the future. Never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..conftest import finetune_of, llama_like, write_model
from .test_global_options import cli


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DELTASTORE_HOME", raising=False)
    h = tmp_path / "home"
    base = llama_like(0, hidden=32, layers=1, vocab=64)
    assert cli("init", str(h)).returncode == 0
    for args in (["add", "base", "b", str(write_model(tmp_path / "b", base))],
                 ["add", "finetune", "f", str(write_model(tmp_path / "f", finetune_of(base))), "--base", "b", "--codec", "lossless"]):
        p = cli(*args, "--home", str(h))
        assert p.returncode == 0, p.stderr
    return h


def one_error_line(p) -> str:  # noqa: ANN001
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("deltastore: error: "), (p.args, p.stderr)
    assert "Traceback" not in p.stdout + p.stderr
    return lines[0]


def objects_of(home: Path, ref: str) -> dict[str, str]:
    """One object id per kind the version names: manifest, blob, delta, tensor, header."""
    import deltastore

    with deltastore.open_store(home, read_only=True) as st:
        found = {"manifest": st.resolve(ref).manifest}
        for f in st.manifest(ref).files:
            if f.object:
                found.setdefault("blob", f.object)
            if f.header:
                found.setdefault("header", f.header)
            for t in f.tensors:
                if t.object:
                    found.setdefault(t.source, t.object)
    return found


def damage(home: Path, oid: str, how: str) -> None:
    hexd = oid.split(":", 1)[1]
    p = next(q for q in (home / "objects").rglob(f"*{hexd[2:]}*") if q.is_file())
    os.chmod(p, 0o644)
    data = p.read_bytes()
    if how == "flip":
        i = len(data) // 2
        p.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif how == "truncate":
        p.write_bytes(data[: len(data) // 3])
    elif how == "empty":
        p.write_bytes(b"")
    else:
        p.unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "empty", "delete"])
def test_damaged_objects_are_one_line(home: Path, tmp_path: Path, how: str) -> None:
    objs = objects_of(home, "f")
    assert {"manifest", "blob", "delta"} <= set(objs), objs
    for kind, oid in sorted(objs.items()):
        if kind == "manifest":
            continue
        damage(home, oid, how)
    out = tmp_path / "out"
    line = one_error_line(cli("checkout", "f", str(out), "--home", str(home)))
    assert "sha256:" in line or "object" in line, line
    damage(home, objs["manifest"], how)
    one_error_line(cli("show", "f", "--home", str(home)))
    one_error_line(cli("checkout", "f", str(tmp_path / "out2"), "--home", str(home)))


def test_a_damaged_config_is_one_line(home: Path) -> None:
    (home / "config.toml").write_text("db_url = [unclosed\nobjects_url = 3\n")
    line = one_error_line(cli("ls", "--home", str(home)))
    assert "config.toml is not valid TOML" in line


def test_a_schema_from_the_future_is_one_line(home: Path) -> None:
    from sqlalchemy import text

    from deltastore.db import make_engine

    engine = make_engine(f"sqlite:///{home / 'catalog.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff01'"))
    engine.dispose()
    for args in (["ls"], ["show", "f"], ["add", "base", "x", str(home)], ["gc"], ["db", "upgrade"]):
        assert "revision ffff01" in one_error_line(cli(*args, "--home", str(home)))
