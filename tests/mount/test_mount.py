"""Every version as plain files through a real FUSE mount (see conftest.py for the store)."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import deltastore

from ..conftest import sha256_file
from .conftest import CACHE_BYTES, Mounted


def test_layout_sizes_and_links_come_from_the_catalog(mounted: Mounted) -> None:
    mp = mounted.mp
    assert sorted(os.listdir(mp)) == ["big", "fragile", "tiny", "tiny-ft", "tiny-ftl"]
    assert sorted(os.listdir(mp / "tiny")) == ["latest", "prod", "v1"]
    assert os.readlink(mp / "tiny" / "latest") == "v1" and os.readlink(mp / "tiny" / "prod") == "v1"
    src = mounted.src["tiny"]
    want = {p.name: p.stat().st_size for p in src.iterdir()}
    got = {p.name: p.stat().st_size for p in (mp / "tiny" / "v1").iterdir()}
    assert got == want
    st = (mp / "tiny" / "v1" / "model.safetensors").stat()
    assert st.st_mode & 0o777 == 0o444


def test_lossless_version_is_byte_identical_sequential_and_ranged(mounted: Mounted) -> None:
    for name in ("tiny", "tiny-ftl", "big"):
        for src in sorted(mounted.src[name].iterdir()):
            assert sha256_file(mounted.mp / name / "latest" / src.name) == sha256_file(src), (name, src.name)
    # random ranged reads (pread) across header, tensor and 4 MiB chunk boundaries of a cold file
    src = mounted.src["tiny-ftl"] / "model.safetensors"
    data = src.read_bytes()
    rng = random.Random(0)
    fd = os.open(mounted.mp / "tiny-ftl" / "v1" / "model.safetensors", os.O_RDONLY)
    try:
        for _ in range(200):
            a = rng.randrange(len(data))
            n = rng.choice([1, 7, 4096, 131072, 1 << 20])
            assert os.pread(fd, n, a) == data[a : a + n]
    finally:
        os.close(fd)


def test_lossy_version_loads_in_transformers_and_equals_checkout(mounted: Mounted, tmp_path: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with deltastore.open(mounted.home) as st:
        assert not st.resolve("tiny-ft").codec == "lossless"
        st.checkout("tiny-ft", tmp_path / "co")
    mounted_dir = mounted.mp / "tiny-ft" / "latest"
    assert sha256_file(mounted_dir / "model.safetensors") == sha256_file(tmp_path / "co" / "model.safetensors")
    with safe_open(tmp_path / "co" / "model.safetensors", "pt") as a, \
            safe_open(mounted_dir / "model.safetensors", "pt") as b:  # mmap through the mount
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            x, y = a.get_tensor(k), b.get_tensor(k)
            assert x.dtype == y.dtype and torch.equal(x.view(torch.int16), y.view(torch.int16)), k
    model = AutoModelForCausalLM.from_pretrained(mounted_dir)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "co")
    for (k, p), (_, q) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(p, q), k


_READER = """
import hashlib, sys
for p in sys.argv[1:]:
    h = hashlib.sha256()
    with open(p, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    print(p, h.hexdigest())
"""


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_several_processes_read_at_once_within_the_cache_cap(mounted: Mounted) -> None:
    """Six readers over the same and different files; every byte right; the mount's memory grows
    by at most the cache cap plus a stated margin (units being decoded: one per server thread at
    most 4 MiB here, the read-ahead unit, and allocator slack) although 3x the cap is read."""
    margin = 48 << 20
    before = _rss(mounted.proc.pid)
    files = {name: mounted.mp / name / "v1" / "model.safetensors" for name in ("big", "tiny", "tiny-ftl")}
    want = {str(p): sha256_file(mounted.src[name] / "model.safetensors") for name, p in files.items()}
    jobs = [[str(files["big"])], [str(files["big"])], [str(files["big"]), str(files["tiny"])],
            [str(files["tiny-ftl"]), str(files["big"])], [str(files["tiny"])], [str(files["tiny-ftl"])]]
    procs = [subprocess.Popen([sys.executable, "-c", _READER, *j], stdout=subprocess.PIPE, text=True) for j in jobs]
    peak = before
    while any(p.poll() is None for p in procs):
        peak = max(peak, _rss(mounted.proc.pid))
        time.sleep(0.02)
    for p in procs:
        out, _ = p.communicate()
        assert p.returncode == 0
        for line in out.splitlines():
            path, digest = line.split()
            assert digest == want[path], path
    assert peak - before <= CACHE_BYTES + margin, f"mount grew {(peak - before) >> 20} MiB"


def test_a_reader_killed_mid_read_leaves_the_mount_working(mounted: Mounted) -> None:
    path = mounted.mp / "big" / "v1" / "model.safetensors"
    slow = "import sys, time\nf = open(sys.argv[1], 'rb', buffering=0)\nwhile f.read(1 << 16):\n    time.sleep(0.01)\n"
    p = subprocess.Popen([sys.executable, "-c", slow, str(path)])
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert sha256_file(path) == sha256_file(mounted.src["big"] / "model.safetensors")


def test_writes_fail_with_erofs(mounted: Mounted) -> None:
    v1 = mounted.mp / "tiny" / "v1"
    for attempt in (lambda: open(v1 / "model.safetensors", "r+b"), lambda: open(v1 / "new.txt", "wb"),
                    lambda: os.mkdir(v1 / "d"), lambda: os.unlink(v1 / "config.json"),
                    lambda: os.rename(v1 / "config.json", v1 / "c.json"), lambda: os.chmod(v1 / "config.json", 0o666)):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS


def test_corrupt_object_gives_eio_and_names_it(mounted: Mounted) -> None:
    with deltastore.open(mounted.home) as st:
        man = st.manifest("fragile@v1")
        f = next(f for f in man.files if f.kind == "safetensors")
        t = max(f.tensors, key=lambda t: t.nbytes)
        obj = st.backend._path(f"objects/{t.object[7:9]}/{t.object[9:]}")
    raw = bytearray(Path(obj).read_bytes())
    raw[-3] ^= 0x40  # one bit in the last plane payload: zstd may still decode it; the hash will not match
    os.chmod(obj, 0o644)
    Path(obj).write_bytes(bytes(raw))
    path = mounted.mp / "fragile" / "v1" / "model.safetensors"
    with pytest.raises(OSError) as e:
        path.read_bytes()
    assert e.value.errno == errno.EIO
    deadline = time.monotonic() + 5
    while t.object not in mounted.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(ln for ln in mounted.log_text().splitlines() if t.object in ln)
    assert "corrupt" in line and "EIO" in line and "fragile/v1/model.safetensors" in line
    # the rest of the mount still works, and so do the corrupt version's other files
    assert (mounted.mp / "fragile" / "v1" / "config.json").read_bytes() == (mounted.src["fragile"] / "config.json").read_bytes()


def test_version_added_after_mounting_appears(mounted: Mounted, tmp_path: Path) -> None:
    from deltastore.zoo.tiny import tiny_finetune

    d = tiny_finetune(mounted.src["tiny"], tmp_path / "v2", seed=11, scale=5e-3)
    with deltastore.open(mounted.home) as st:
        st.add_finetune("tiny-ftl", d, "tiny", codec="lossless", tags=["next"])
    deadline = time.monotonic() + 10
    while "v2" not in os.listdir(mounted.mp / "tiny-ftl") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {"v1", "v2", "latest", "next"} <= set(os.listdir(mounted.mp / "tiny-ftl"))
    while os.readlink(mounted.mp / "tiny-ftl" / "latest") != "v2" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.readlink(mounted.mp / "tiny-ftl" / "latest") == "v2"
    got = mounted.mp / "tiny-ftl" / "latest" / "model.safetensors"
    assert sha256_file(got) == sha256_file(d / "model.safetensors")


def test_a_removed_version_stays_readable_where_it_is_open(mounted: Mounted, tmp_path: Path) -> None:
    """``rm`` of a version: its path goes (ENOENT once the ttl lapses), a reader that has the file
    open or mapped keeps reading that version's bytes (page cache kept, attributes from the
    handle), and the next ``add`` takes a new number, whose file has the new bytes."""
    from deltastore.zoo.tiny import tiny_llama_dir

    a = tiny_llama_dir(tmp_path / "a", seed=21, hidden=32, layers=1)
    b = tiny_llama_dir(tmp_path / "b", seed=22, hidden=32, layers=1)
    want_a, want_b = (a / "model.safetensors").read_bytes(), (b / "model.safetensors").read_bytes()
    assert len(want_a) == len(want_b) and want_a != want_b
    with deltastore.open(mounted.home) as st:
        st.add_base("gone", a)
    f = mounted.mp / "gone" / "v1" / "model.safetensors"
    deadline = time.monotonic() + 10
    while not f.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    held = open(f, "rb")
    try:
        assert held.read() == want_a  # now in the kernel's page cache
        with deltastore.open(mounted.home) as st:
            st.rm("gone@v1")
            assert st.add_base("gone", b).number == 2  # numbers are never reused
        time.sleep(1.0)  # past the mount's ttl (0.5 s here): names and attributes are asked again
        assert not f.exists()
        held.seek(0)
        assert held.read() == want_a
        assert (mounted.mp / "gone" / "v2" / "model.safetensors").read_bytes() == want_b
    finally:
        held.close()


def test_opening_config_json_starts_decoding_the_weights(mounted: Mounted) -> None:
    """A loader reads config.json, then builds the model for seconds before it touches a weight: the
    mount's operations queue the version's safetensors units at the config's open (the same
    operations the FUSE mount runs, here called directly on the real store and cache), so the
    weights are decoded by the time they are read; without the option nothing is decoded."""
    from deltastore.filecache import DecodedCache
    from deltastore.mount import DeltaStoreFS

    want = (mounted.src["tiny-ftl"] / "model.safetensors").read_bytes()
    with deltastore.open(mounted.home) as st:
        for on in (False, True):
            cache = DecodedCache(64 << 20)
            ops = DeltaStoreFS(st, cache, prefetch_on_config=on)
            try:
                fh = ops.open("/tiny-ftl/v1/model.safetensors", os.O_RDONLY)  # its layout: nothing decoded
                units = ops._handles[fh].vf.units
                assert cache.stats.misses == 0
                ops.release("/tiny-ftl/v1/config.json", ops.open("/tiny-ftl/v1/config.json", os.O_RDONLY))
                deadline = time.monotonic() + (30 if on else 1)
                while not all(cache.holds(u.key) for u in units) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not on:
                    assert cache.stats.misses == 0
                    continue
                assert all(cache.holds(u.key) for u in units)
                decoded = cache.stats.misses
                assert ops.reader.read(ops._handles[fh].vf, 0, len(want)) == want
                assert cache.stats.misses == decoded  # every unit the read needed was decoded already
                ops.release("/tiny-ftl/v1/model.safetensors", fh)
            finally:
                cache.close()


def test_a_scan_of_many_configs_does_not_queue_every_version(mounted: Mounted) -> None:
    """`grep -r` over a mount opens every config.json: what an open queued is dropped once two newer
    versions' configs were opened after it, so only the last two versions' weights get decoded."""
    import threading

    import numpy as np

    from deltastore.filecache import DecodedCache
    from deltastore.mount import DeltaStoreFS

    with deltastore.open(mounted.home) as st:
        cache = DecodedCache(64 << 20)
        ops = DeltaStoreFS(st, cache)
        try:
            gate = threading.Event()
            cache.prefetch("gate", lambda: (gate.wait(10), np.zeros(1, np.uint8))[1])  # holds the worker
            units = {}
            for name in ("tiny", "tiny-ft", "tiny-ftl"):  # the scan: three versions' configs, in turn
                fh = ops.open(f"/{name}/v1/model.safetensors", os.O_RDONLY)
                units[name] = ops._handles[fh].vf.units
                ops.release(f"/{name}/v1/model.safetensors", fh)
                ops.release(f"/{name}/v1/config.json", ops.open(f"/{name}/v1/config.json", os.O_RDONLY))
            gate.set()
            deadline = time.monotonic() + 30
            while not all(cache.holds(u.key) for u in units["tiny-ftl"]) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert all(cache.holds(u.key) for u in units["tiny-ftl"])  # the newest: decoded
            # every unit the oldest's open queued was dropped unrun (its tensors may be held all the
            # same: the fine-tunes' decode reads them as their base)
            assert cache.stats.dropped == len(units["tiny"])
        finally:
            cache.close()


def _requests_so_far(mounted: Mounted) -> dict[str, float]:
    """SIGUSR1 to the mount process, then its next "requests so far" log line, parsed."""
    from deltastore.mount import parse_stats

    seen = mounted.log_text().count("requests so far:")
    mounted.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while mounted.log_text().count("requests so far:") <= seen:
        assert time.monotonic() < deadline, "no stats line logged within 10 s of SIGUSR1"
        assert mounted.proc.poll() is None, "SIGUSR1 ended the mount"
        time.sleep(0.05)
    return parse_stats(mounted.log_text())


def test_a_warm_read_is_served_by_the_page_cache(mounted: Mounted) -> None:
    """Once read, a version file is served from the kernel's page cache across opens (auto_cache,
    no direct_io): three more passes over it bring the server their OPENs but (nearly) no READ,
    as its counters, logged on SIGUSR1, show. Without page caching the passes would read 3x the
    file; the bound leaves room for pages the kernel evicts meanwhile on a busy machine."""
    path = mounted.mp / "big" / "v1" / "model.safetensors"
    size_mb = path.stat().st_size / 1e6
    want = sha256_file(mounted.src["big"] / "model.safetensors")
    assert sha256_file(path) == want
    before = _requests_so_far(mounted)
    for _ in range(3):
        assert sha256_file(path) == want
    after = _requests_so_far(mounted)
    assert after["MB read"] - before["MB read"] < size_mb / 4, (before, after)
    assert after["open"] - before["open"] == 3  # the counters do count: one OPEN per open()


def test_unmount_names_what_is_open_then_unmounts_cleanly(mounted: Mounted, capsys: pytest.CaptureFixture) -> None:
    """Last test of the folder: it unmounts the shared mount."""
    from deltastore.cli.main import main

    f = open(mounted.mp / "tiny" / "v1" / "config.json", "rb")
    try:
        with pytest.raises(SystemExit) as e:
            main(["unmount", str(mounted.mp)])
        assert e.value.code == 1
        msg = capsys.readouterr().err
        assert "busy" in msg and f"pid {os.getpid()}" in msg and "tiny/v1/config.json" in msg
        assert os.path.ismount(mounted.mp)
    finally:
        f.close()
    main(["unmount", str(mounted.mp)])
    assert "unmounted" in capsys.readouterr().out
    assert not os.path.ismount(mounted.mp)
    assert mounted.proc.wait(timeout=30) == 0
