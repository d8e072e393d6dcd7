"""The pipeline's pieces: the in-order file hash, and adds at 1 and at several workers agreeing."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

import deltastore
from deltastore.pipeline import InOrderHash

from ..conftest import llama_like, write_model


def test_in_order_hash_matches_sha256_of_the_stream_whatever_order_pieces_arrive() -> None:
    head = b"header bytes"
    pieces = [os.urandom(random.Random(i).randrange(0, 300_000)) for i in range(40)]
    want = hashlib.sha256(head + b"".join(pieces)).hexdigest()
    h = InOrderHash(head)
    order = list(range(len(pieces)))
    random.Random(7).shuffle(order)
    threads = [threading.Thread(target=h.put, args=(i, pieces[i])) for i in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert h.hexdigest(len(pieces)) == want
    h.close()  # a second close is harmless


def test_in_order_hash_waits_for_a_missing_piece_and_closes_without_it() -> None:
    h = InOrderHash()
    h.put(1, b"second")
    done = threading.Event()

    def wait() -> None:
        h.wait_through(1)
        done.set()

    t = threading.Thread(target=wait)
    t.start()
    assert not done.wait(0.2)  # piece 0 is not there: nothing past it can be hashed
    h.put(0, b"first")
    assert done.wait(10)
    t.join()
    assert h.hexdigest(2) == hashlib.sha256(b"firstsecond").hexdigest()
    stuck = InOrderHash()
    stuck.put(3, b"never reached")
    stuck.close()  # returns: the thread ends though piece 0 never came


def test_in_order_hash_hands_a_hashing_error_to_the_waiter() -> None:
    h = InOrderHash()
    h.put(0, object())  # not a buffer: hashlib raises on the hashing thread
    with pytest.raises(TypeError):
        h.wait_through(0)
    h.close()


@pytest.mark.parametrize("workers", [1, 3])
def test_add_records_each_file_sha256_at_any_worker_count(tmp_path: Path, workers: int) -> None:
    """The file hash runs inline at 1 worker and on its own thread beside the encodes at more;
    both must give the file's real SHA-256, for every shard."""
    src = write_model(tmp_path / "m", llama_like(3), shards=3)
    st = deltastore.open(tmp_path / "home")
    st.workers = workers
    try:
        v = st.add_base("m", src)
        files = {f.path: f.sha256 for f in st.manifest(v.manifest).files}
    finally:
        st.close()
    for p in sorted(src.glob("*.safetensors")):
        assert files[p.name] == hashlib.sha256(p.read_bytes()).hexdigest(), p.name
