"""The Client against a real cluster: round trips compared by hash, file
objects, the namespace, and the exceptions bad input gets."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import pickle
import subprocess

import pytest

import shardfs

MIB = 1 << 20


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(seed: int, size: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:size])


@pytest.mark.parametrize("size", [0, 1, MIB, MIB + 1, 5 * MIB + 123])
def test_bytes_round_trip_by_hash(client, size):
    data = payload(size, size)
    path = f"/py/round/{size}.bin"
    stats = client.put(data, path, chunk_size=MIB)
    assert stats["bytes"] == size
    assert stats["chunks"] == (size + MIB - 1) // MIB
    assert digest(client.get(path)) == digest(data)
    info = client.stat(path)
    assert info["type"] == "file" and info["size"] == size and info["replication"] == 3
    assert sum(c["length"] for c in client.chunks(path)) == size


def test_local_files_round_trip(client, tmp_path):
    data = payload(7, 3 * MIB + 5)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    client.put(source, "/py/files/source.bin")
    back = tmp_path / "back.bin"
    assert client.get("/py/files/source.bin", back) == len(data)
    assert digest(back.read_bytes()) == digest(data)
    assert not list(tmp_path.glob("*.shardfs-part"))


def test_file_objects_read_seek_tell(client):
    data = payload(3, 4 * MIB + 17)
    client.put(data, "/py/file.bin", chunk_size=MIB)
    with client.open("/py/file.bin") as f:
        assert isinstance(f, io.BufferedIOBase)
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        f.seek(2 * MIB - 3)
        assert f.read(6) == data[2 * MIB - 3 : 2 * MIB + 3]
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:]
        assert f.read() == b""
        f.seek(0)
        buffer = bytearray(MIB + 9)
        assert f.readinto(buffer) == len(buffer)
        assert bytes(buffer) == data[: len(buffer)]
        f.seek(0)
        assert digest(f.read()) == digest(data)
    assert f.closed
    with pytest.raises(ValueError):
        f.read(1)
    raw = client.open("/py/file.bin", buffering=0)
    raw.seek(MIB)
    assert raw.read(MIB) == data[MIB : 2 * MIB]
    raw.close()
    assert client.read("/py/file.bin", 3 * MIB, 100) == data[3 * MIB : 3 * MIB + 100]


def test_writer_stores_on_close_and_not_on_error(client):
    with client.open("/py/written.bin", "wb") as f:
        f.write(b"abc")
        f.write(payload(1, MIB))
    assert client.get("/py/written.bin") == b"abc" + payload(1, MIB)
    with pytest.raises(RuntimeError):
        with client.open("/py/never.bin", "wb") as f:
            f.write(b"half")
            raise RuntimeError("the writer failed")
    assert not client.exists("/py/never.bin")
    with pytest.raises(FileExistsError):
        client.open("/py/written.bin", "xb")


def test_namespace_operations(client):
    client.mkdir("/py/ns/a/b")
    client.put(b"1", "/py/ns/a/one")
    client.put(b"22", "/py/ns/a/b/two")
    assert client.ls("/py/ns/a") == ["b", "one"]
    detail = client.ls("/py/ns/a", detail=True)
    assert [(e["name"], e["type"], e["size"]) for e in detail] == [("b", "directory", 0), ("one", "file", 1)]
    assert detail[1]["path"] == "/py/ns/a/one"
    assert list(client.walk("/py/ns")) == [
        ("/py/ns", ["a"], []),
        ("/py/ns/a", ["b"], ["one"]),
        ("/py/ns/a/b", [], ["two"]),
    ]
    client.mv("/py/ns/a", "/py/ns/moved")
    assert client.get("/py/ns/moved/b/two") == b"22"
    assert not client.exists("/py/ns/a")
    assert client.isdir("/py/ns/moved") and client.isfile("/py/ns/moved/one")
    with pytest.raises(OSError):
        client.rm("/py/ns/moved")
    assert client.rm("/py/ns/moved", recursive=True) == 2
    assert client.ls("/py/ns") == []


def test_errors_are_the_python_exceptions_users_expect(client, cluster):
    with pytest.raises(FileNotFoundError, match="/py/missing: no such file or directory"):
        client.stat("/py/missing")
    with pytest.raises(FileNotFoundError):
        client.open("/py/missing")
    with pytest.raises(FileNotFoundError):
        client.get("/py/missing")
    client.mkdir("/py/errors")
    with pytest.raises(IsADirectoryError):
        client.open("/py/errors")
    with pytest.raises(ValueError, match="must be absolute"):
        client.stat("relative/path")
    with pytest.raises(ValueError, match="control character"):
        client.put(b"x", "/py/bad\nname")
    with pytest.raises(FileNotFoundError):
        client.put("/no/such/local/file", "/py/x")
    with pytest.raises(TypeError):
        client.put(12, "/py/x")
    with pytest.raises(ValueError, match="rank"):
        shardfs.ShardStream("/py", rank=2, world=2, client=client)
    with pytest.raises(ConnectionError, match="no metaserver reachable"):
        shardfs.Client("127.0.0.1:1")
    with pytest.raises(ValueError, match="no metaserver address"):
        shardfs.Client("")


def test_the_cluster_is_reached_over_tls_with_its_own_ca(cluster, tmp_path, monkeypatch):
    # The CA given explicitly, as SHARDFS_CA gives it to every other test.
    client = shardfs.Client(cluster.meta, ca=cluster.certs.ca)
    data = payload(21, MIB + 5)
    client.put(data, "/py/tls.bin")
    assert digest(client.get("/py/tls.bin")) == digest(data)
    # The settings travel with a pickled client.
    again = pickle.loads(pickle.dumps(client))
    assert digest(again.get("/py/tls.bin")) == digest(data)
    # Another cluster's CA: the servers' certificates are refused.
    other = tmp_path / "other-ca"
    subprocess.run(
        [str(cluster.bin / "shardfs"), "cluster", "init-ca", "--dir", str(other)],
        check=True, stdout=subprocess.DEVNULL,
    )
    with pytest.raises(ConnectionError, match="not issued by the CA"):
        shardfs.Client(cluster.meta, ca=other / "ca.pem")
    # Plaintext to a TLS cluster, and no CA at all: say what to do.
    with pytest.raises(ConnectionError, match="speaks TLS"):
        shardfs.Client(cluster.meta, insecure=True)
    # A reader's token reads, and writing raises PermissionError.
    reader = subprocess.run(
        [str(cluster.bin / "shardfs"), "--meta", cluster.meta,
         "admin", "token", "create", "--name", "py-reader", "--role", "reader", "--prefix", "/py"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    monkeypatch.setenv("SHARDFS_TOKEN", reader)
    as_reader = shardfs.Client(cluster.meta)
    assert digest(as_reader.get("/py/tls.bin")) == digest(data)
    with pytest.raises(PermissionError, match="writer role"):
        as_reader.put(b"no", "/py/denied.bin")
    with pytest.raises(PermissionError, match="only under /py"):
        as_reader.ls("/")
    monkeypatch.setenv("SHARDFS_TOKEN", "sfs1.nobody." + "0" * 64)
    with pytest.raises(PermissionError, match="not valid here"):
        shardfs.Client(cluster.meta).get("/py/tls.bin")
    monkeypatch.delenv("SHARDFS_CA")
    with pytest.raises(ValueError, match="SHARDFS_CA"):
        shardfs.Client(cluster.meta)
    with pytest.raises(ValueError, match="cannot read CA certificate"):
        shardfs.Client(cluster.meta, ca=tmp_path / "missing.pem")


def test_a_corrupted_replica_is_skipped_and_all_corrupted_is_an_error(own_cluster):
    client = own_cluster.client()
    data = payload(11, 2 * MIB)
    client.put(data, "/py/corrupt.bin", chunk_size=MIB)
    chunks = client.chunks("/py/corrupt.bin")

    def replicas(chunk_id):
        found = []
        for i in own_cluster.chunks:
            path = own_cluster.chunk_dir(i) / "chunks" / chunk_id[:2] / chunk_id[2:4] / chunk_id
            if path.exists():
                found.append(path)
        return found

    def flip(path):
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))

    first = replicas(chunks[0]["id"])
    assert len(first) == 3
    flip(first[0])
    fresh = own_cluster.client()
    assert digest(fresh.get("/py/corrupt.bin")) == digest(data)
    for path in replicas(chunks[1]["id"]):
        flip(path)
    with pytest.raises(OSError, match="could not be read from any replica"):
        own_cluster.client().get("/py/corrupt.bin")


def test_a_client_pickles_as_its_settings(client):
    copy = pickle.loads(pickle.dumps(client))
    assert copy.meta == client.meta
    client.put(b"pickled", "/py/pickled")
    assert copy.get("/py/pickled") == b"pickled"


def _child_reads(client, path, queue):
    queue.put(digest(client.get(path)))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_client_made_in_the_parent_works_in_a_child(client, method):
    data = payload(5, 2 * MIB)
    client.put(data, f"/py/child-{method}.bin")
    assert client.get(f"/py/child-{method}.bin") == data  # the parent used it first
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=_child_reads, args=(client, f"/py/child-{method}.bin", queue))
    child.start()
    try:
        assert queue.get(timeout=60) == digest(data)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert client.get(f"/py/child-{method}.bin") == data  # and the parent still can


def test_ctrl_c_interrupts_a_blocked_call(tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import time

    # A "metaserver" that accepts connections and never answers: the
    # client's first call waits on it for seconds.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    port = silent.getsockname()[1]
    script = (
        "import sys, time, shardfs\n"
        "print('calling', flush=True)\n"
        "started = time.monotonic()\n"
        "try:\n"
        f"    shardfs.Client('127.0.0.1:{port}')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted after', round(time.monotonic() - started, 2), flush=True)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "calling"
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        silent.close()
    assert out.startswith("interrupted after"), out
    assert float(out.split()[-1]) < 2.5, out
