"""A real PostgreSQL server on loopback for the catalog tests: started per session, stopped by pid."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .ports import free_ports


def pg_bin() -> Path | None:
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(cand, "initdb")):
            return Path(cand)
    p = shutil.which("initdb")
    return Path(p).parent if p else None


class PostgresServer:
    def __init__(self) -> None:
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
        # pytest's tmp dirs are private to root; the server runs as the postgres user
        self.root = Path(tempfile.mkdtemp(prefix="deltastore-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.port = free_ports(1)[0]
        self.pid: int | None = None

    def _as_postgres(self, *cmd: str) -> list[str]:
        if os.geteuid() == 0:  # initdb refuses to run as root
            return ["runuser", "-u", "postgres", "--", *cmd]
        return list(cmd)

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
        subprocess.run(self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"),
                       check=True, capture_output=True)
        log = self.root / "log"
        subprocess.run(self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o",
                                         f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sock} -c fsync=off",
                                         "-l", str(log), "-w", "start"), check=True, capture_output=True)
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def create_db(self, name: str) -> str:
        subprocess.run(self._as_postgres(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name),
                       check=True, capture_output=True)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(self.pid, 0)
                time.sleep(0.05)
        except ProcessLookupError:
            pass
        self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)
