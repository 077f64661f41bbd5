"""ShardDataset through real DataLoaders over a WebDataset-format dataset
written with the `webdataset` library: every sample once, equal counts per
rank, exact mid-epoch resume (StatefulDataLoader), a changed world size,
and a chunk server killed mid-epoch."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from torch.utils.data import DataLoader

import shardfs
from shardfs.torch import ShardDataset

webdataset = pytest.importorskip("webdataset")

SHARDS = 8
PER_SHARD = 10


def write_dataset(client, tmp_path, prefix):
    """8 tar shards of 10 samples (.cls, .json, .txt, .bin) written by
    webdataset.ShardWriter, uploaded; returns {key: hash of the sample}."""
    local = tmp_path / "wds"
    local.mkdir()
    expected = {}
    with webdataset.ShardWriter(str(local / "shard-%04d.tar"), maxcount=PER_SHARD) as sink:
        for i in range(SHARDS * PER_SHARD):
            key = f"sample{i:05d}"
            blob = hashlib.sha256(key.encode()).digest() * (50 + i)
            sample = {
                "__key__": key,
                "cls": i % 7,
                "json": {"index": i, "name": key},
                "txt": f"caption {i}",
                "bin": blob,
            }
            sink.write(sample)
            expected[key] = fingerprint({"cls": i % 7, "json": {"index": i, "name": key}, "txt": f"caption {i}", "bin": blob})
    names = sorted(os.listdir(local))
    assert len(names) == SHARDS
    for name in names:
        client.put(local / name, f"{prefix}/{name}")
    return expected


def fingerprint(sample):
    h = hashlib.sha256()
    h.update(str(sample["cls"]).encode())
    h.update(json.dumps(sample["json"], sort_keys=True).encode())
    h.update(sample["txt"].encode())
    h.update(sample["bin"])
    return h.hexdigest()


def keys_and_prints(batches):
    out = []
    for batch in batches:
        for key, print_ in zip(batch["key"], batch["print"]):
            out.append((key, print_))
    return out


def to_row(sample):
    return {"key": sample["__key__"], "print": fingerprint(sample)}


@pytest.fixture(scope="module")
def dataset(cluster, tmp_path_factory):
    client = cluster.client()
    expected = write_dataset(client, tmp_path_factory.mktemp("wds"), "/pytorch/wds")
    return client, expected


def test_two_ranks_two_workers_cover_every_sample_once(dataset):
    client, expected = dataset
    per_rank = []
    for rank in range(2):
        ds = ShardDataset("/pytorch/wds", format="webdataset", seed=5, client=client,
                          map=to_row, rank=rank, world_size=2)
        loader = DataLoader(ds, batch_size=4, num_workers=2)
        per_rank.append(keys_and_prints(loader))
    assert len(per_rank[0]) == len(per_rank[1]) == SHARDS * PER_SHARD // 2
    everything = per_rank[0] + per_rank[1]
    assert len({k for k, _ in everything}) == len(everything), "a sample came twice"
    assert dict(everything) == expected


def test_set_epoch_reshuffles_the_same_way_everywhere(dataset):
    client, _ = dataset
    ds = ShardDataset("/pytorch/wds", format="raw", seed=1, client=client)
    first = [p for p, _ in ds]
    assert [p for p, _ in ds] == first
    ds.set_epoch(1)
    second = [p for p, _ in ds]
    assert sorted(second) == sorted(first) and second != first


def test_stateful_dataloader_resumes_exactly_mid_epoch(dataset):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    client, _ = dataset

    def loader():
        ds = ShardDataset("/pytorch/wds", format="webdataset", seed=2, client=client, map=to_row)
        return stateful.StatefulDataLoader(ds, batch_size=3, num_workers=2)

    whole = keys_and_prints(loader())
    interrupted = loader()
    got = []
    for step, batch in enumerate(interrupted):
        got += keys_and_prints([batch])
        if step == 6:
            state = interrupted.state_dict()
            break
    del interrupted
    resumed = loader()
    resumed.load_state_dict(state)
    got += keys_and_prints(resumed)
    assert got == whole


def test_a_changed_world_size_covers_the_rest_exactly_once(dataset):
    client, expected = dataset
    states, seen = [], []
    # Each old rank stops inside its second shard: 3 shards each are left
    # (the broken-off one counts), 6 for the 3 new ranks, 2 each.
    for rank, stop in [(0, 13), (1, 17)]:
        ds = ShardDataset("/pytorch/wds", format="webdataset", seed=3, client=client,
                          map=to_row, rank=rank, world_size=2)
        it = iter(ds)
        seen += [next(it) for _ in range(stop)]
        states.append(json.loads(json.dumps(ds.state_dict())))
    for rank in range(3):
        ds = ShardDataset("/pytorch/wds", format="webdataset", seed=3, client=client,
                          map=to_row, rank=rank, world_size=3)
        ds.load_state_dict({"states": states})
        seen += list(ds)
    keys = [row["key"] for row in seen]
    assert len(keys) == len(set(keys)), "a sample came twice"
    assert {row["key"]: row["print"] for row in seen} == expected


def test_a_chunk_server_killed_mid_epoch_loses_and_repeats_nothing(own_cluster, tmp_path):
    client = own_cluster.client()
    expected = write_dataset(client, tmp_path, "/pytorch/kill")
    ds = ShardDataset("/pytorch/kill", format="webdataset", seed=4, client=client,
                      map=to_row, prefetch_bytes=1)
    rows = []
    for i, row in enumerate(ds):
        rows.append((row["key"], row["print"]))
        if i == 15:
            own_cluster.kill_chunk(2)
    assert len(rows) == len(expected)
    assert dict(rows) == expected


def test_spawned_workers_work_too(dataset):
    client, expected = dataset
    ds = ShardDataset("/pytorch/wds", format="webdataset", seed=6, client=client, map=to_row)
    loader = DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="spawn")
    assert dict(keys_and_prints(loader)) == expected


def test_bad_arguments(dataset, cluster):
    client, _ = dataset
    with pytest.raises(ValueError, match="format"):
        ShardDataset("/pytorch/wds", format="parquet")
    with pytest.raises(FileNotFoundError):
        list(ShardDataset("/pytorch/none", client=client))
    with pytest.raises(ValueError, match="rank"):
        ShardDataset("/pytorch/wds", rank=3, world_size=2)
