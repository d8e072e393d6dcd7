"""Global options where git and DVC users type them: before the command or after it, and
``deltastore init DIR`` like ``git init DIR``. Each form through the real entry point."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ..clirun import cli
from ..conftest import llama_like, write_model


def ok(*args: str) -> subprocess.CompletedProcess:
    p = cli(*args)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def console_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("deltastore")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "deltastore.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture(autouse=True)
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DELTASTORE_HOME points at a home no test names: a global option that is not honoured
    would create a store there, which the test then sees."""
    wrong = tmp_path / "not-this-home"
    monkeypatch.setenv("DELTASTORE_HOME", str(wrong))
    for v in ("DELTASTORE_DB_URL", "DELTASTORE_OBJECTS_URL"):
        monkeypatch.delenv(v, raising=False)
    yield wrong
    assert not wrong.exists(), "a command used DELTASTORE_HOME instead of the --home it was given"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("m") / "base", llama_like(0, hidden=32, layers=1, vocab=64))


def test_init_home_after_the_command(tmp_path: Path) -> None:
    p = ok("init", "--home", str(tmp_path / "h"))
    assert (tmp_path / "h" / "config.toml").exists() and f"store at {tmp_path / 'h'}" in p.stdout


def test_init_dir_like_git_init(tmp_path: Path) -> None:
    info = json.loads(ok("init", str(tmp_path / "d"), "--json").stdout)
    assert info["home"] == str(tmp_path / "d") and (tmp_path / "d" / "catalog.db").exists()
    # relative, as typed in a shell
    with contextlib.chdir(tmp_path):
        ok("init", "rel")
    assert (tmp_path / "rel" / "config.toml").exists()
    # the same home twice is fine; two different homes is a clear error
    ok("init", str(tmp_path / "d"), "--home", str(tmp_path / "d"))
    p = cli("init", str(tmp_path / "d"), "--home", str(tmp_path / "other"))
    assert p.returncode == 1 and p.stderr.startswith("deltastore: error: two homes given"), p.stderr
    assert not (tmp_path / "other").exists()


def test_options_before_the_command_keep_working(tmp_path: Path, model: Path) -> None:
    h = str(tmp_path / "h")
    ok("--home", h, "init")
    assert ok("--home", h, "-q", "add", "base", "m", str(model)).stdout == ""
    assert [m["name"] for m in json.loads(ok("--home", h, "ls", "--json").stdout)] == ["m"]
    assert [m["name"] for m in json.loads(ok("--json", "--home", h, "ls").stdout)] == ["m"]


def test_quiet_and_json_after_the_command(tmp_path: Path, model: Path) -> None:
    h = str(tmp_path / "h")
    ok("init", h)
    assert ok("add", "base", "m", str(model), "--home", h, "-q").stdout == ""
    assert "added m@v2" in ok("add", "base", "m", str(model), "--home", h).stdout
    v = json.loads(ok("add", "base", "m", str(model), "-q", "--home", h, "--json").stdout)
    assert v["ref"] == "m@v3"
    assert ok("tag", "m@v3", "prod", "--quiet", "--home", h).stdout == ""
    # every command takes them after its name; each prints its data as asked
    assert [x["number"] for x in json.loads(ok("log", "m", "--home", h, "--json").stdout)] == [3, 2, 1]
    assert json.loads(ok("show", "m@prod", "--no-tensors", "--json", "--home", h).stdout)["version"]["number"] == 3
    assert json.loads(ok("du", "--home", h, "--json").stdout)["versions"] == 3
    assert json.loads(ok("verify", "m", "--home", h, "--json").stdout)["ok"]
    assert json.loads(ok("gc", "-n", "--home", h, "--json").stdout)["deleted"] == 0
    assert json.loads(ok("db", "current", "--home", h, "--json").stdout)["status"] == "up to date"
    assert json.loads(ok("db", "upgrade", "--json", "--home", h).stdout)["after"]
    # --json before the command turns on the command's own
    assert json.loads(ok("--json", "du", "--home", h).stdout)["versions"] == 3
    # between a group and its command too
    assert json.loads(ok("db", "--home", h, "current", "--json").stdout)["status"] == "up to date"
    assert ok("add", "--home", h, "-q", "base", "m", str(model)).stdout == ""


def test_catalog_and_objects_urls_after_the_command(tmp_path: Path, model: Path) -> None:
    h, cat, objs = tmp_path / "h", tmp_path / "elsewhere" / "cat.db", tmp_path / "objs"
    cat.parent.mkdir()
    ok("init", str(h), "--db-url", f"sqlite:///{cat}", "--objects-url", str(objs))
    cfg = tomllib.loads((h / "config.toml").read_text())
    assert cfg == {"db_url": f"sqlite:///{cat}", "objects_url": str(objs)}
    ok("add", "base", "m", str(model), "--home", str(h), "-q")
    assert cat.exists() and any(p.is_file() for p in (objs / "objects").rglob("*"))
    # another home's command pointed at this catalog and objects for one call
    ok("init", str(tmp_path / "h2"))
    assert json.loads(ok("ls", "--home", str(tmp_path / "h2"), "--json").stdout) == []
    seen = json.loads(ok("ls", "--home", str(tmp_path / "h2"), "--db-url", f"sqlite:///{cat}",
                         "--objects-url", str(objs), "--json").stdout)
    assert [m["name"] for m in seen] == ["m"]
    # the option after the command wins over the one before it
    seen = json.loads(ok("--db-url", "sqlite:////nonexistent/x.db", "ls", "--home", str(tmp_path / "h2"),
                         "--db-url", f"sqlite:///{cat}", "--objects-url", str(objs), "--json").stdout)
    assert [m["name"] for m in seen] == ["m"]


def test_help_lists_the_global_options() -> None:
    text = ok("add", "base", "--help").stdout
    for opt in ("--home", "--quiet", "--db-url", "--objects-url", "--json"):
        assert opt in text, opt
    assert "--install-completion" not in text


def test_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    p = cli("ls", "--home", str(tmp_path / "h"), "--nosuch")
    assert p.returncode == 2 and "No such option" in p.stderr and "Traceback" not in p.stderr


def test_console_script_takes_options_after_the_command(tmp_path: Path, model: Path) -> None:
    """The installed ``deltastore`` script, as a shell runs it (one process: each costs a torch import)."""
    h = tmp_path / "h"
    ok("init", str(h))
    p = console_script("add", "base", "m", str(model), "--home", str(h), "-q")
    assert p.returncode == 0 and p.stdout == "", p.stderr
    assert [m["name"] for m in json.loads(ok("--json", "ls", "--home", str(h)).stdout)] == ["m"]
