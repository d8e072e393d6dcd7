"""The pipeline's pieces: the in-order file hash, and adds at 1 and at several workers agreeing."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import deltastore
from deltastore.errors import CorruptObjectError
from deltastore.pipeline import InOrderHash, largest_first, ordered_map
from deltastore.safetensors_io import read_header

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
    """Asked for (``file_sha256``), the file hash runs inline at 1 worker and on its own thread
    beside the encodes at more; both must give the file's real SHA-256, for every shard."""
    src = write_model(tmp_path / "m", llama_like(3), shards=3)
    st = deltastore.open(tmp_path / "home")
    st.workers = workers
    try:
        v = st.add_base("m", src, file_sha256=True)
        files = {f.path: f.sha256 for f in st.manifest(v.manifest).files}
    finally:
        st.close()
    for p in sorted(src.glob("*.safetensors")):
        assert files[p.name] == hashlib.sha256(p.read_bytes()).hexdigest(), p.name


def test_deferred_put_is_durable_and_named_after_flush_and_reports_its_errors_there(tmp_path: Path) -> None:
    """``put(defer=True)``: the writer returns once the bytes are written; the fsync and rename run
    on the backend's thread, and ``flush`` waits for them. A deferred put whose fsync fails must
    fail the flush (so an add's commit), not vanish."""
    from deltastore.backend import Backend

    b = Backend(str(tmp_path / "objs"))
    blobs = {f"objects/{i:02x}/{'e' * 62}": os.urandom(random.Random(i).randrange(1, 200_000)) for i in range(20)}
    for k, data in blobs.items():
        b.put(k, [data[:7], memoryview(data)[7:]], defer=True)  # parts written in turn
    b.flush()
    for k, data in blobs.items():
        assert b.get(k) == data
        assert os.stat(b._path(k)).st_mode & 0o777 == 0o444  # read-only, as a plain put leaves it
    assert not [p for p in (tmp_path / "objs").rglob(".tmp-*")]

    # an fsync that fails (here: the temp file taken away before its turn) reaches flush
    gate = threading.Event()
    real = b._make_durable

    def slow(tmp: str, p: str) -> None:
        gate.wait(10)
        real(tmp, p)

    b._make_durable = slow  # the syncer calls what Backend gave it: patch before its first use
    b2 = Backend(str(tmp_path / "objs2"))
    b2._make_durable = slow
    b2.put("objects/aa/" + "f" * 62, b"x" * 1000, defer=True)
    for tmp in (tmp_path / "objs2").rglob(".tmp-*"):
        tmp.unlink()
    gate.set()
    with pytest.raises(FileNotFoundError):
        b2.flush()
    b2.flush()  # the error is reported once


def test_checkout_of_a_lossless_finetune_names_a_wrong_base_object(tmp_path: Path) -> None:
    """A checkout decodes an exact delta's base without re-hashing it (the result's sha256 is
    checked instead). A base object that decodes cleanly to other bytes must still fail the
    checkout, and the error must name the base's object, as when the base was re-hashed."""
    from deltastore.codec import planes
    from deltastore.objects import _FRAME, KINDS, MAGIC, PLANES, key_of

    base_sd = llama_like(5)
    ft_sd = {k: (v.to(torch.float32) + 0.01 * torch.randn_like(v.to(torch.float32))).to(v.dtype) for k, v in base_sd.items()}
    st = deltastore.open(tmp_path / "home")
    try:
        st.add_base("m", write_model(tmp_path / "b", base_sd))
        st.add_finetune("ft", write_model(tmp_path / "f", ft_sd), base="m", codec="lossless")
        man = st.manifest(st.resolve("ft@v1").manifest)
        name, entry = next((t.name, t) for _, t in man.tensors() if t.source == "delta")
        base_entry = st.manifest(man.base).tensor_map()[name]
        # rewrite the base tensor's object as a whole, well-formed object of other bytes
        raw = np.frombuffer(bytearray(st.objects.get(base_entry.object)), dtype=np.uint8).copy()
        raw[:2] ^= 0xFF
        frame = _FRAME.pack(MAGIC, KINDS["tensor"], bytes([PLANES]), 0)
        path = Path(st.backend._path(key_of(base_entry.object)))
        path.chmod(0o644)
        path.write_bytes(planes.compress_framed(raw, 2, frame, rotate=True).tobytes())
        with pytest.raises(CorruptObjectError) as e:
            st.checkout("ft@v1", tmp_path / "out")
        assert base_entry.object in str(e.value)
    finally:
        st.close()


def test_buffer_pool_reuses_buffers_and_never_holds_more_than_were_in_use_at_once() -> None:
    from deltastore.pipeline import BufferPool

    pool = BufferPool()
    a, b = pool.take(1000), pool.take(500)
    assert a.size == 1000 and b.size == 500 and a.dtype == np.uint8
    base_a = a.base if a.base is not None else a
    pool.give(a)
    pool.give(b)
    c = pool.take(800)  # the smallest free buffer that holds it: a's
    assert c.size == 800 and (c.base is base_a or c is base_a)
    d = pool.take(2000)  # nothing free is big enough: b's (too small) is dropped, a new one made
    assert d.size == 2000
    assert pool._free == []
    pool.give(c)
    pool.give(d)
    assert len(pool._free) == 2  # two were in use at once, never more held


def test_finetune_add_gives_the_same_objects_at_any_worker_count(tmp_path: Path) -> None:
    """The pooled read and base buffers are reused across tensors: a reuse too early would show
    as other bytes in some object, at some worker count."""
    base_sd = llama_like(11)
    ft_sd = {k: (v.to(torch.float32) + 0.01 * torch.randn_like(v.to(torch.float32))).to(v.dtype) for k, v in base_sd.items()}
    b, f = write_model(tmp_path / "b", base_sd, shards=2), write_model(tmp_path / "f", ft_sd, shards=2)
    manifests = []
    for workers in (1, 3):
        st = deltastore.open(tmp_path / f"home{workers}")
        st.workers = workers
        try:
            st.add_base("m", b)
            v = st.add_finetune("ft", f, base="m", codec="lossless")
            manifests.append(v.manifest)
            out = tmp_path / f"out{workers}"
            st.checkout("ft@v1", out)
            for p in sorted(f.glob("*.safetensors")):
                assert (out / p.name).read_bytes() == p.read_bytes()
        finally:
            st.close()
    assert manifests[0] == manifests[1]


def test_largest_first_orders_by_size_and_keeps_ties_in_input_order() -> None:
    assert largest_first([3, 9, 1, 9, 0, 3]) == [1, 3, 0, 5, 2, 4]
    assert largest_first([]) == []


@pytest.mark.parametrize("workers", [1, 4])
def test_an_add_started_largest_first_keeps_the_file_order_in_its_manifest(tmp_path: Path, workers: int) -> None:
    """With workers an add streams every shard's tensors through one window, the largest first
    (pipeline.largest_first), and a mapped checkout decodes a file's tensors largest first: the
    manifest still lists the files in the directory's order and each file's tensors in its order,
    and checkouts of the base and of a lossless fine-tune give every file back byte for byte."""
    g = torch.Generator().manual_seed(3)
    sizes = [(8, 16), (64, 96), (4,), (32, 32), (16, 8), (128, 160)]  # the largest last, as a Llama file's lm_head
    base_sd = {f"t{i}.weight": torch.randn(*s, generator=g).to(torch.bfloat16) for i, s in enumerate(sizes)}
    ft_sd = {k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(torch.bfloat16) for k, v in base_sd.items()}
    b, f = write_model(tmp_path / "b", base_sd, shards=2), write_model(tmp_path / "f", ft_sd, shards=2)
    st = deltastore.open(tmp_path / "home")
    st.workers = workers
    try:
        st.add_base("m", b)
        v = st.add_finetune("ft", f, base="m", codec="lossless")
        for ref, src in (("m@v1", b), ("ft@v1", f)):
            man = st.manifest(st.resolve(ref).manifest)
            shards = sorted(src.glob("*.safetensors"))
            assert len(shards) == 2 and [x.path for x in man.files if x.kind == "safetensors"] == [p.name for p in shards]
            for x, p in zip([x for x in man.files if x.kind == "safetensors"], shards):
                assert [t.name for t in x.tensors] == [t.name for t in read_header(p).tensors]
            out = tmp_path / f"out-{ref}"
            st.checkout(ref, out)
            for p in shards:
                assert (out / p.name).read_bytes() == p.read_bytes()
        assert v.stored_bytes > 0
    finally:
        st.close()


def test_ordered_map_does_not_let_a_slow_head_stop_the_items_behind_it() -> None:
    """held=False (an add's or a mapped checkout's tensors: results hold no bytes): while the first,
    large item runs, the items behind it start as workers free up, results still come in order,
    and no more than ``workers`` run at once. With held=True the window waits for the head."""
    later_started = threading.Event()
    running, peak, lock = [0], [0], threading.Lock()

    def fn(i: int) -> tuple[int, bool]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            if i == 0:  # the head: finishes only once the last item has started (or gives up)
                return i, later_started.wait(3)
            if i == 5:
                later_started.set()
            return i, True
        finally:
            with lock:
                running[0] -= 1

    out = list(ordered_map(fn, range(6), workers=2, weight=lambda i: 1, held=False))
    assert out == [(i, True) for i in range(6)]
    assert peak[0] <= 2

    later_started.clear()
    held = ordered_map(fn, range(6), workers=2, weight=lambda i: 1, held=True)
    t0 = time.monotonic()
    first = next(held)
    assert first == (0, False) and time.monotonic() - t0 >= 2.5  # the head waited alone: item 5 never started
    assert list(held) == [(i, True) for i in range(1, 6)]


@pytest.mark.parametrize("held", [False, True])
def test_ordered_map_keeps_the_bytes_in_flight_within_its_budget(held: bool) -> None:
    """The window's memory bound: items of 100 bytes on 8 workers with a budget of 350 run at
    most 3 at a time (beyond the first, none starts past the budget), and every one runs; the
    default budget (1 GiB) lets 10 of 16 workers take 100 MiB items at once.

    Why 1 GiB and no more: on the H200 machine's 16 cores a 7B fine-tune's add with a sixteenth of
    the free memory instead (all 16 of its 90 MB MLP tensors at once, not 11) ran as many threads
    (~12), spent 8% more CPU a GB and was slower (median 1.17 against 1.36 GB/s; issue 7,
    raw_h200/s14)."""
    running, peak, lock = [0], [0], threading.Lock()

    def fn(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return i

    assert list(ordered_map(fn, range(24), workers=8, weight=lambda i: 100, budget=350, held=held)) == list(range(24))
    assert peak[0] == 3
    peak[0] = 0
    assert list(ordered_map(fn, range(40), workers=16, weight=lambda i: 100 << 20, held=held)) == list(range(40))
    assert peak[0] == 10


def test_ordered_map_stops_starting_items_after_a_failure_and_raises_it_in_order() -> None:
    started: list[int] = []

    def fn(i: int) -> int:
        started.append(i)
        if i == 1:
            raise ValueError("item 1")
        if i == 0:
            time.sleep(0.3)
        return i

    it = ordered_map(fn, range(50), workers=2, held=False)
    assert next(it) == 0
    with pytest.raises(ValueError, match="item 1"):
        next(it)
    assert len(started) < 10


_NO_COMPILE_IN_WORKERS = r"""
import sys, threading
from pathlib import Path
import torch
import deltastore
from deltastore.codec import _numba, _quant_numba
from numba.core.dispatcher import Dispatcher
from numba.core.registry import CPUDispatcher

base_dir, ft_dir, home, out, codec, phase = sys.argv[1:7]

def compiled():
    return {(name, sig) for mod in (_numba, _quant_numba) for name, f in vars(mod).items() if isinstance(f, CPUDispatcher)
            for sig in f.signatures}

loader = {}  # each kernel signature: the thread that compiled or loaded it (Dispatcher.compile: both)
_compile = Dispatcher.compile
def compile(self, sig):
    had = set(self.signatures)
    try:
        return _compile(self, sig)
    finally:
        for s in set(self.signatures) - had:
            loader.setdefault((self.py_func.__name__, s), threading.current_thread().name)
Dispatcher.compile = compile

st = deltastore.open(home)
if phase == "add":
    st.add_base("m", base_dir)
before = compiled()
if phase == "add":
    st.add_finetune("ft", ft_dir, base="m", codec=codec)
else:
    st.checkout("ft@v1", out)
new = compiled() - before
print(" | ".join(map(str, (len(new), sorted({loader.get(k, "?") for k in new})))))
"""


@pytest.mark.parametrize("codec", ["lossless", "delta-come"])
def test_a_finetune_add_and_checkout_with_workers_load_every_kernel_before_the_workers_start(tmp_path: Path, codec: str) -> None:
    """Codec.warm (issue 7): with WARM_MIN_WORKERS workers or more, the codecs' compiled kernels are
    loaded before any worker calls one, so no worker meets a kernel's first call (numba's compiler
    lock, the GIL held while it loads: on 16 cores every worker waited on it): a checkout's on the
    calling thread before the pool starts, an add's on a thread of its own while the workers read
    and hash their first tensors. The add and the checkout each in a fresh process, 4 workers:
    every kernel signature the op loaded was loaded on that thread (``Dispatcher.compile``, which
    loads from numba's cache too). With DELTASTORE_WARM=0 the workers load them (the test can fail)."""
    import subprocess
    import sys

    base = llama_like(0)
    ft = {k: (v.view(torch.int16) + (torch.arange(v.numel()).reshape(v.shape) % 3 == 0).to(torch.int16)).view(torch.bfloat16)
          for k, v in base.items()}
    write_model(tmp_path / "base", base)
    write_model(tmp_path / "ft", ft)

    def phase(name: str, home: str, warm: str = "1") -> tuple[int, str, str]:
        p = subprocess.run([sys.executable, "-c", _NO_COMPILE_IN_WORKERS, str(tmp_path / "base"), str(tmp_path / "ft"),
                            str(tmp_path / home), str(tmp_path / f"out-{home}"), codec, name],
                           env={**os.environ, "DELTASTORE_THREADS": "4", "DELTASTORE_WARM": warm},
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        n, loaders = p.stdout.strip().splitlines()[-1].split(" | ")
        return int(n), loaders

    n, loaders = phase("add", "home")
    if codec == "lossless":  # a lossy add runs LOSSY_WORKERS = 2 workers, below WARM_MIN_WORKERS: no warm
        assert n > 0 and loaders == "['deltastore-warm']"
    n, loaders = phase("checkout", "home")
    assert n > 0 and loaders == "['MainThread']"
    # the control: without warm, the workers load what the add and the checkout need
    n, loaders = phase("add", "cold", warm="0")
    if codec == "lossless":
        assert n > 0 and "deltastore-warm" not in loaders and "MainThread" not in loaders
    n, loaders = phase("checkout", "cold", warm="0")
    assert n > 0 and "MainThread" not in loaders


_WARM_LEFT = r"""
import sys, threading
import deltastore
base_dir, ft_dir, home = sys.argv[1:4]
st = deltastore.open(home)
st.add_base("m", base_dir)
st.add_finetune("ft", ft_dir, base="m", codec="lossless")
print(sorted(t.name for t in threading.enumerate() if t.name == "deltastore-warm"))
"""


def test_an_add_returns_with_its_kernel_load_over_even_where_no_tensor_waited_for_it(tmp_path: Path) -> None:
    """A fine-tune's add loads the kernels on a thread beside its workers (issue 7); where no tensor
    changed, no worker waits for it, and the add still returns only once it is over: an import
    left running behind the caller could be cut off by the process's exit. In a fresh process
    (numba's import takes about a second; this add of a tiny copy of its base, much less)."""
    import subprocess
    import sys

    base = llama_like(0)
    write_model(tmp_path / "base", base)
    write_model(tmp_path / "ft", base)  # every tensor as the base's
    p = subprocess.run([sys.executable, "-c", _WARM_LEFT, str(tmp_path / "base"), str(tmp_path / "ft"), str(tmp_path / "home")],
                       env={**os.environ, "DELTASTORE_THREADS": "4"}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"
