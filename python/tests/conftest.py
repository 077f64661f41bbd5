"""A real shardfs cluster for the Python tests: three metaservers and
chunk servers, the project's own binaries, on loopback ports, in a
temporary directory; killed (and the directory removed) at the end, even
when a test fails.

The binaries come from `SHARDFS_BIN_DIR`, else `target/release` (what
`deploy/test.sh` and `deploy/local-cluster.sh up` build), else
`target/debug`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import shardfs

REPO = Path(__file__).resolve().parents[2]


def binaries() -> Path:
    explicit = os.environ.get("SHARDFS_BIN_DIR")
    candidates = [Path(explicit)] if explicit else [REPO / "target" / "release", REPO / "target" / "debug"]
    for directory in candidates:
        if (directory / "shardfs-meta").exists() and (directory / "shardfs-chunk").exists():
            return directory
    raise RuntimeError(
        f"no shardfs binaries in {', '.join(map(str, candidates))}: run cargo build first"
    )


class Certificates:
    """One cluster CA for the whole session (`shardfs cluster init-ca`),
    and a certificate per member (`shardfs cluster issue-cert`). Clients
    find the CA through `SHARDFS_CA`, as after `source cluster.env`."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="shardfs-py-tls-"))
        self.bin = binaries()
        subprocess.run(
            [str(self.bin / "shardfs"), "cluster", "init-ca", "--dir", str(self.dir)],
            check=True, stdout=subprocess.DEVNULL,
        )
        self.ca = self.dir / "ca.pem"
        self.admin_token_file = self.dir / "admin.token"
        subprocess.run(
            [str(self.bin / "shardfs"), "admin", "token", "bootstrap", "--out", str(self.admin_token_file)],
            check=True, stdout=subprocess.DEVNULL,
        )
        self.admin_token = self.admin_token_file.read_text().strip()
        atexit.register(shutil.rmtree, self.dir, True)

    def server_args(self, kind: str, i: int) -> List[str]:
        cert, key = self.dir / f"{kind}-{i}.pem", self.dir / f"{kind}-{i}.key"
        if not cert.exists():
            subprocess.run(
                [str(self.bin / "shardfs"), "cluster", "issue-cert",
                 "--ca-dir", str(self.dir), f"--{kind}", str(i)],
                check=True, stdout=subprocess.DEVNULL,
            )
        args = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(self.ca)]
        if kind == "meta":
            args += ["--admin-token-file", str(self.admin_token_file)]
        return args


_CERTS: Optional[Certificates] = None


def certificates() -> Certificates:
    global _CERTS
    if _CERTS is None:
        _CERTS = Certificates()
        os.environ["SHARDFS_CA"] = str(_CERTS.ca)
        os.environ["SHARDFS_TOKEN"] = _CERTS.admin_token
        os.environ.pop("SHARDFS_INSECURE", None)
    return _CERTS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, chunk_servers: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="shardfs-py-"))
        self.bin = binaries()
        self.certs = certificates()
        self.meta_addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        self.metas: Dict[int, subprocess.Popen] = {}
        self.chunks: Dict[int, subprocess.Popen] = {}
        self.chunk_addrs: Dict[int, str] = {}
        try:
            for i in range(1, 4):
                self.start_meta(i)
            for i in range(1, chunk_servers + 1):
                self.start_chunk(i)
            self.wait_healthy()
        except BaseException:
            self.close()
            raise

    @property
    def meta(self) -> str:
        return ",".join(self.meta_addrs)

    def _spawn(self, name: str, args: List[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")
        env = dict(os.environ, RUST_LOG="info,openraft=warn")
        child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=env)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = child.stdout.readline().decode()
            if line.startswith("listening on "):
                child.addr = line.split()[-1]
                return child
            if not line and child.poll() is not None:
                break
        child.kill()
        raise RuntimeError(f"{name} did not start; see {self.dir / (name + '.log')}")

    def start_meta(self, i: int) -> None:
        peers = ",".join(f"{n + 1}={a}" for n, a in enumerate(self.meta_addrs))
        self.metas[i] = self._spawn(
            f"meta-{i}",
            [
                str(self.bin / "shardfs-meta"),
                "--id", str(i),
                "--listen", self.meta_addrs[i - 1],
                "--peers", peers,
                "--data-dir", str(self.dir / f"meta-{i}"),
                "--dead-after-secs", "3",
                *self.certs.server_args("meta", i),
            ],
        )

    def start_chunk(self, i: int) -> None:
        child = self._spawn(
            f"chunk-{i}",
            [
                str(self.bin / "shardfs-chunk"),
                "--listen", "127.0.0.1:0",
                "--id", str(i),
                "--meta", self.meta,
                "--zone", f"zone-{i}",
                "--data-dir", str(self.chunk_dir(i)),
                *self.certs.server_args("chunk", i),
            ],
        )
        self.chunks[i] = child
        self.chunk_addrs[i] = child.addr

    def chunk_dir(self, i: int) -> Path:
        return self.dir / f"chunk-{i}"

    def kill_chunk(self, i: int) -> None:
        child = self.chunks.pop(i)
        child.kill()
        child.wait()

    def client(self, **kwargs) -> shardfs.Client:
        return shardfs.Client(self.meta, **kwargs)

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until a put and a verified get succeed with every chunk server
        registered."""
        deadline = time.monotonic() + timeout
        last: Optional[BaseException] = None
        while time.monotonic() < deadline:
            try:
                client = shardfs.Client(self.meta)
                client.put(b"probe", "/.probe", replication=len(self.chunks))
                if client.get("/.probe") == b"probe":
                    client.rm("/.probe")
                    return
            except (ConnectionError, OSError, ValueError) as e:
                last = e
            time.sleep(0.3)
        raise RuntimeError(f"the cluster in {self.dir} did not become healthy: {last}")

    def close(self) -> None:
        for child in list(self.chunks.values()) + list(self.metas.values()):
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
            child.wait()
            if child.stdout:
                child.stdout.close()
        self.chunks.clear()
        self.metas.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster():
    """One cluster shared by the tests that do not break it."""
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def own_cluster():
    """A cluster of four chunk servers for one test that breaks things."""
    c = Cluster(chunk_servers=4)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def client(cluster) -> shardfs.Client:
    return cluster.client()
