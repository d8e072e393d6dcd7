"""The team set-up: a shared store with a PostgreSQL catalog and SeaweedFS S3 objects as the remote
of two laptops' stores. Pushes are committed through the team catalog (numbers allocated there);
the team store itself sees them at once."""

from __future__ import annotations

from pathlib import Path

import pytest

import deltastore
from deltastore import remotes
from deltastore.errors import RemoteError

from ..conftest import tree_hashes
from ..pg import pg_bin

pytestmark = [pytest.mark.slow, pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL is not installed")]
pytest.importorskip("psycopg")


def test_team_remote_on_postgres_and_s3(pg, s3, filled, other, models, tmp_path: Path) -> None:
    db = pg.create_db("team")
    url = "s3://deltastore/team-pg"
    for st in (filled, other):
        remotes.add_remote(st.config.home, "team", url, db_url=db)
    other.add_base("b", models.base)
    other.add_finetune("f", models.ft2, base="b", codec="lossless")
    a = filled.push("f@best", "team")
    b = other.push("f", "team")
    assert (a.dst_ref, b.dst_ref) == ("f@v1", "f@v2") and [m.new for m in b.versions] == [False, True]

    team = deltastore.open(tmp_path / "team-home", db_url=db, objects_url=url)
    assert [v.ref for v in team.versions("f")] == ["f@v1", "f@v2"] and team.resolve("f@best").number == 1
    assert team.verify().ok and team.gc().deleted == 0

    c = deltastore.open(tmp_path / "c")
    remotes.add_remote(c.config.home, "team", url, db_url=db)
    assert c.pull("f@v2", "team").dst_ref == "f@v2"  # the team's number, free here
    c.checkout("f@v2", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft2)

    bad = remotes.Remote("gone", url, db_url=f"postgresql+psycopg://postgres:Pw-Secret-1@127.0.0.1:{pg.port}/nosuchdb")
    with pytest.raises(RemoteError) as e:
        c.pull("f", bad)
    assert "remote 'gone'" in str(e.value) and "nosuchdb" in str(e.value) and "Pw-Secret-1" not in str(e.value) and "\n" not in str(e.value)
