"""Push and pull through SeaweedFS S3 (a real server on loopback); and the remotes that cannot be
used: unreachable, wrong credentials, no bucket, a bucket holding something else. Each is one
RemoteError line without the secret, and nothing local changes."""

from __future__ import annotations

from pathlib import Path

import pytest

import deltastore
from deltastore import remotes
from deltastore.errors import RemoteError

from ..conftest import tree_hashes
from ..ports import free_ports


def test_round_trip_through_s3(s3, filled, other, models, tmp_path: Path) -> None:
    url = "s3://deltastore/team"
    remotes.add_remote(filled.config.home, "origin", url)
    r = filled.push("f@best")
    assert [m.dst for m in r.new_versions] == ["b@v1", "f@v1"] and r.objects_sent > 0
    assert filled.push("f@best").objects_sent == 0  # re-push sends nothing

    remotes.add_remote(other.config.home, "origin", url)
    p = other.pull("f@best")  # the fine-tune brings its base
    assert [m.dst for m in p.new_versions] == ["b@v1", "f@v1"] and p.bytes_sent == r.bytes_sent
    other.checkout("f@best", tmp_path / "out")
    assert tree_hashes(tmp_path / "out") == tree_hashes(models.ft)
    assert other.resolve("b@prod").number == 1 and other.verify().ok

    # a second fine-tune pushed from the other store: only its own objects move
    other.add_finetune("f", models.ft2, base="b", codec="lossless")
    r2 = other.push("f@v2")
    assert r2.dst_ref == "f@v2" and r2.objects_present > 0  # config and tokenizer blobs are shared
    assert [m.new for m in r2.versions] == [False, True]
    filled.pull("f@v2")
    filled.checkout("f@v2", tmp_path / "out2")
    assert tree_hashes(tmp_path / "out2") == tree_hashes(models.ft2)

    # the bucket prefix is a store: `db rebuild` reads it as one
    st = deltastore.open(tmp_path / "rebuilt", objects_url=url)
    assert st.rebuild_catalog().versions == 3


def _local_state(st) -> tuple:
    return (sorted(st.objects.all_oids()), [(v.ref, tuple(v.tags)) for m in st.models() for v in st.versions(m.name)])


def test_bad_remotes_are_one_line(s3, source, other, tmp_path: Path) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**s3.storage_options(), skip_instance_cache=True)
    fs.pipe_file("deltastore/photos/cat.jpg", b"\xff\xd8\xff")
    endpoint = s3.storage_options()["client_kwargs"]
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    cases = {
        "unreachable": (remotes.Remote("dead", "s3://deltastore/x", storage_options={
            "client_kwargs": {"endpoint_url": dead, "region_name": "us-east-1"},
            "config_kwargs": {"connect_timeout": 2, "retries": {"max_attempts": 1}}}), "cannot reach"),
        "credentials": (remotes.Remote("wrong", "s3://deltastore/team", storage_options={
            "key": "not-our-key", "secret": "Wr0ngSecret-xyz", "client_kwargs": endpoint}), "access denied"),
        "no bucket": (remotes.Remote("nob", "s3://no-such-bucket/p"), "no bucket named 'no-such-bucket'"),
        "not a store": (remotes.Remote("photos", "s3://deltastore/photos"), "not a deltastore store"),
    }
    before_a, before_b = _local_state(source), _local_state(other)
    for what, (remote, want) in cases.items():
        for op in (lambda: source.push("f", remote), lambda: other.pull("f", remote)):
            with pytest.raises(RemoteError) as e:
                op()
            msg = str(e.value)
            assert want in msg and "\n" not in msg, (what, msg)
            assert "Wr0ngSecret-xyz" not in msg and f"remote {remote.name!r}" in msg
    assert _local_state(source) == before_a and _local_state(other) == before_b
