"""Bad input around remotes, from the command line or a hand-edited remotes.toml: one line on
stderr and exit status 1, never a traceback, and the remotes file left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..cli.test_cli import run


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "a"
    run(h, "init")
    return h


def _one_line(p, want: str) -> None:
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and want in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_storage_option_given_twice_as_value_and_table(home: Path, tmp_path: Path) -> None:
    p = run(home, "remote", "add", "o", str(tmp_path / "r"), "-o", "client_kwargs=1", "-o", "client_kwargs.region=x", ok=False)
    _one_line(p, "client_kwargs is already given a value")
    _one_line(run(home, "remote", "add", "o", str(tmp_path / "r"), "-o", "a..b=1", ok=False), "empty part")
    assert not (home / "remotes.toml").exists()
    run(home, "remote", "add", "o", str(tmp_path / "r"), "-o", "client_kwargs.region=x", "-o", "client_kwargs.verify=false")


@pytest.mark.parametrize("text, want", [
    ('[remotes.x]\nurl = "/srv/m"\ndb_url = 5\n', "db_url must be a string"),
    ("remotes = 3\n", "must be a table"),
    ('[remotes.x]\nurl = ""\n', "needs a url"),  # not the current directory
    ('[remotes."../up"]\nurl = "/srv/m"\n', "contains a slash"),
])
def test_bad_remotes_file(home: Path, text: str, want: str) -> None:
    (home / "remotes.toml").write_text(text)
    for args in (("remote", "ls"), ("pull", "m", "x")):
        _one_line(run(home, *args, ok=False), want)
    assert (home / "remotes.toml").read_text() == text
