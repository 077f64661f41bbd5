"""The shardfs:// fsspec file system with real third-party readers:
pyarrow datasets and pandas, ranged reads, writes, listings."""

from __future__ import annotations

import hashlib

import pytest

fsspec = pytest.importorskip("fsspec")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from shardfs.fsspec import ShardFileSystem  # noqa: E402

MIB = 1 << 20


def table(n):
    return pa.table(
        {
            "id": pa.array(range(n), type=pa.int64()),
            "text": pa.array([hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]),
        }
    )


def test_pyarrow_and_pandas_read_parquet_through_fsspec(cluster, tmp_path, monkeypatch):
    fs = ShardFileSystem(client=cluster.client(chunk_size=MIB))
    parts = []
    for i in range(3):
        part = table(20_000).slice(0, 20_000 - i)
        local = tmp_path / f"part-{i}.parquet"
        pq.write_table(part, local, row_group_size=5000)
        fs.put(str(local), f"/pyfs/table/part-{i}.parquet")
        parts.append(part)
    import pyarrow.dataset as ds

    read = ds.dataset("/pyfs/table", filesystem=fs, format="parquet").to_table()
    want = pa.concat_tables(parts)
    assert read.sort_by("id").equals(want.sort_by("id"))

    pandas = pytest.importorskip("pandas")
    monkeypatch.setenv("SHARDFS_META", cluster.meta)
    frame = pandas.read_parquet("shardfs:///pyfs/table/part-1.parquet")
    assert frame["text"].tolist() == parts[1].column("text").to_pylist()
    named = pandas.read_parquet(f"shardfs://{cluster.meta_addrs[0]}/pyfs/table/part-2.parquet")
    assert len(named) == parts[2].num_rows


def test_reads_are_ranged(cluster):
    client = cluster.client(chunk_size=MIB)
    data = bytes(range(256)) * (8 * MIB // 256)
    client.put(data, "/pyfs/ranged.bin")
    fs = ShardFileSystem(client=cluster.client())
    before = fs.client.counters()["bytes_received"]
    with fs.open("/pyfs/ranged.bin", block_size=64 * 1024) as f:
        f.seek(5 * MIB + 100)
        assert f.read(1000) == data[5 * MIB + 100 : 5 * MIB + 1100]
    fetched = fs.client.counters()["bytes_received"] - before
    assert 0 < fetched <= 2 * MIB, f"{fetched} bytes fetched for a 1000-byte read"
    assert fs.cat_file("/pyfs/ranged.bin", start=-10) == data[-10:]


def test_write_list_move_and_delete(cluster):
    fs = fsspec.filesystem("shardfs", meta=cluster.meta)
    with fs.open("shardfs:///pyfs/w/a.txt", "wb") as f:
        f.write(b"hello ")
        f.write(b"world")
    assert fs.cat("shardfs:///pyfs/w/a.txt") == b"hello world"
    fs.pipe("/pyfs/w/b.bin", b"\x00" * 10)
    assert sorted(fs.ls("/pyfs/w", detail=False)) == ["/pyfs/w/a.txt", "/pyfs/w/b.bin"]
    assert fs.info("/pyfs/w/b.bin")["size"] == 10
    assert fs.isdir("/pyfs/w") and fs.isfile("/pyfs/w/a.txt")
    assert {"/pyfs/w/a.txt", "/pyfs/w/b.bin"} <= set(fs.find("/pyfs"))
    fs.mv("/pyfs/w/a.txt", "/pyfs/w/c.txt")
    assert fs.exists("/pyfs/w/c.txt") and not fs.exists("/pyfs/w/a.txt")
    fs.rm("/pyfs/w", recursive=True)
    assert not fs.exists("/pyfs/w")
    with pytest.raises(FileNotFoundError):
        fs.info("/pyfs/w")
