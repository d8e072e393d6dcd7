"""ObjectDB.put_raw of a payload's parts (serialize.to_parts): the same object, id and bytes as
put_raw of the joined bytes (issue 7: a delta is no longer copied with the GIL held to write it)."""

from __future__ import annotations

import numpy as np

from deltastore.backend import Backend
from deltastore.objects import ObjectDB


def test_parts_make_the_object_the_joined_bytes_make(tmp_path):
    rng = np.random.default_rng(0)
    parts = [b"DSE1head", rng.integers(0, 256, 300_000, dtype=np.uint8), b"", rng.integers(0, 256, 17, dtype=np.uint8)]
    joined = b"".join(memoryview(p).cast("B") for p in parts)
    a, b = ObjectDB(Backend(str(tmp_path / "a"))), ObjectDB(Backend(str(tmp_path / "b")))
    pa = a.put_raw(parts, "delta", defer=True)
    pb = b.put_raw(joined, "delta")
    a.backend.flush()
    assert (pa.oid, pa.logical, pa.stored, pa.new) == (pb.oid, pb.logical, pb.stored, pb.new)
    assert a.get(pa.oid) == joined == b.get(pb.oid)
    assert (tmp_path / "a" / "objects" / pa.oid[7:9] / pa.oid[9:]).read_bytes() == \
        (tmp_path / "b" / "objects" / pb.oid[7:9] / pb.oid[9:]).read_bytes()
    assert not a.put_raw(parts, "delta").new  # stored once
