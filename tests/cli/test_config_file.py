"""The config file: written 0600 in a 0700 home, never left naming a catalog `init` could not use,
and a readable one that holds keys is pointed out (with the fix), not silently changed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from .test_global_options import cli


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in ("DELTASTORE_HOME", "DELTASTORE_DB_URL", "DELTASTORE_OBJECTS_URL"):
        monkeypatch.delenv(v, raising=False)


def test_modes(tmp_path: Path) -> None:
    home = tmp_path / "a" / "home"
    assert cli("init", str(home)).returncode == 0
    assert stat.S_IMODE((home / "config.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    # a directory the user made keeps its mode; the file is still 0600
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o750)
    mine.chmod(0o750)
    assert cli("init", str(mine)).returncode == 0
    assert stat.S_IMODE(mine.stat().st_mode) == 0o750
    assert stat.S_IMODE((mine / "config.toml").stat().st_mode) == 0o600


def test_failed_init_leaves_no_config(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bad = "postgresql+psycopg://someone:Pa55word-x@127.0.0.1:1/cat"
    p = cli("init", str(home), "--db-url", bad)
    assert p.returncode == 1 and "cannot open the catalog" in p.stderr and "Pa55word-x" not in p.stderr
    assert not (home / "config.toml").exists()
    # the retry with a catalog that works gets that catalog, not the first one
    assert cli("init", str(home)).returncode == 0
    assert "sqlite:///" in (home / "config.toml").read_text()


def test_a_readable_config_with_keys_is_pointed_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(In this process pytest's log capture holds the root logger, so the line is read from there;
    the console script writes it to stderr, through the redacting stream: test_secrets.py.)"""
    home = tmp_path / "home"
    assert cli("init", str(home)).returncode == 0
    cfg = home / "config.toml"
    cfg.write_text(cfg.read_text() + '\n[storage_options]\nkey = "AKIAEXAMPLEKEY99"\nsecret = "ex/Secret+Value42"\n')
    cfg.chmod(0o644)
    p = cli("ls", "--home", str(home), "--json")
    assert p.returncode == 0 and p.stdout.strip() == "[]"
    said = "\n".join(r.getMessage() for r in caplog.records if r.name == "deltastore")
    assert f"readable by others (mode 644): run `chmod 600 {cfg}`" in said
    assert "AKIAEXAMPLEKEY99" not in said + p.stderr and "ex/Secret+Value42" not in said + p.stderr
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o644  # pointed out, not changed
