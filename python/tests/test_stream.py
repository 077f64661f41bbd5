"""ShardStream: deterministic per-rank assignment, every shard once,
resumable cursors (same and changed world size)."""

from __future__ import annotations

import hashlib
import json

import pytest

import shardfs


def make_dataset(client, prefix, count):
    shards = {}
    for i in range(count):
        data = hashlib.sha256(f"{prefix}-{i}".encode()).digest() * (1000 + i)
        path = f"{prefix}/shard-{i:04d}.bin"
        client.put(data, path)
        shards[path] = hashlib.sha256(data).hexdigest()
    return shards


def read(stream):
    return [(path, hashlib.sha256(data).hexdigest()) for path, data in stream]


def test_ranks_split_every_shard_once_deterministically(client):
    shards = make_dataset(client, "/pystream/a", 12)
    seen = []
    per_rank = []
    for rank in range(3):
        got = read(shardfs.ShardStream("/pystream/a", rank=rank, world=3, seed=7, client=client))
        per_rank.append(got)
        seen += got
    assert sorted(seen) == sorted(shards.items())
    assert [len(r) for r in per_rank] == [4, 4, 4]
    again = read(shardfs.ShardStream("/pystream/a", rank=1, world=3, seed=7, client=client))
    assert again == per_rank[1]
    epoch0 = read(shardfs.ShardStream("/pystream/a", seed=7, client=client))
    epoch1 = read(shardfs.ShardStream("/pystream/a", seed=7, epoch=1, client=client))
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    ordered = read(shardfs.ShardStream("/pystream/a", shuffle=False, client=client))
    assert [p for p, _ in ordered] == sorted(shards)


def test_state_resumes_exactly_and_is_json(client):
    make_dataset(client, "/pystream/b", 10)
    whole = read(shardfs.ShardStream("/pystream/b", seed=3, client=client))
    stream = shardfs.ShardStream("/pystream/b", seed=3, client=client)
    it = iter(stream)
    first = [next(it) for _ in range(4)]
    state = json.loads(json.dumps(stream.state()))
    assert state["position"] == 4
    rest = read(shardfs.ShardStream("/pystream/b", client=client).resume(state))
    assert read(first) + rest == whole


def test_resume_all_with_another_world_covers_the_rest_once(client):
    shards = make_dataset(client, "/pystream/c", 24)
    states, done = [], []
    for rank, stop in zip(range(3), [5, 2, 7]):
        stream = shardfs.ShardStream("/pystream/c", rank=rank, world=3, seed=9, client=client)
        it = iter(stream)
        done += read(next(it) for _ in range(stop))
        states.append(stream.state())
    rest = []
    for rank in range(2):
        rest += read(shardfs.ShardStream("/pystream/c", rank=rank, world=2, client=client).resume_all(states))
    assert len(rest) == 24 - 14
    assert sorted(done + rest) == sorted(shards.items())


def test_bad_prefix_and_bad_state(client):
    with pytest.raises(FileNotFoundError):
        list(shardfs.ShardStream("/pystream/missing", client=client))
    with pytest.raises(ValueError, match="not a shardfs stream state"):
        list(shardfs.ShardStream("/pystream/b", client=client).resume({"nonsense": 1}))
    stream = shardfs.ShardStream("/pystream/b", client=client)
    next(iter(stream))
    with pytest.raises(RuntimeError, match="before the stream is iterated"):
        stream.resume({})
