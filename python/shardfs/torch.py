"""`ShardDataset`: a PyTorch `IterableDataset` over a shardfs directory.

    from torch.utils.data import DataLoader
    from shardfs.torch import ShardDataset

    dataset = ShardDataset("/datasets/train", format="webdataset", seed=1)
    loader = DataLoader(dataset, batch_size=32, num_workers=4)
    for epoch in range(10):
        dataset.set_epoch(epoch)
        for batch in loader:
            ...

Shards are split across ranks (from `torch.distributed` when it is
initialized, else the `RANK` and `WORLD_SIZE` environment variables, else
the `rank`/`world_size` arguments, else one rank) and across each rank's
DataLoader workers, deterministically: rank r's worker w reads the shards
of virtual rank r * workers + w of world * workers. Every shard is read
once per epoch, and every rank gets the same number of shards (the
remainder is padded by repeating shards, or cut with `drop_remainder`), so
ranks with equal-sized shards see equal counts and DDP does not stall.

`state_dict()`/`load_state_dict()` resume mid-epoch, mid-shard: the state
is the shard stream's cursor plus how many samples of the current shard
were yielded. `torchdata.stateful_dataloader.StatefulDataLoader` keeps one
per worker and gives each back to its worker. To resume with another world
size or worker count, gather every old state (one per rank and worker) and
load `{"states": [...]}` everywhere: what no old rank had reached is split
across the new ones, each sample once.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch.utils.data

from . import Client, ShardStream
from .wds import group as tar_group

__all__ = ["ShardDataset"]

_FORMATS = ("raw", "webdataset")


class ShardDataset(torch.utils.data.IterableDataset):
    """The shards under `prefix` as training samples.

    `format="raw"` yields `(path, bytes)` per shard; `format="webdataset"`
    yields one dict per sample of each tar shard, as `webdataset` does
    (`__key__`, `__url__`, and one entry per extension: `cls`, `json`,
    `txt` decoded, the rest as bytes). `map` is applied to every item.
    """

    def __init__(
        self,
        prefix: str,
        format: str = "raw",
        shuffle: bool = True,
        seed: int = 0,
        drop_remainder: bool = False,
        client: Optional[Client] = None,
        map: Optional[Callable[[Any], Any]] = None,
        *,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        prefetch_bytes: Optional[int] = None,
    ) -> None:
        super().__init__()
        if format not in _FORMATS:
            raise ValueError(f"format {format!r}: use one of {', '.join(_FORMATS)}")
        if (rank is None) != (world_size is None):
            raise ValueError("give rank and world_size together, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world {world_size}: the rank must be below the world size")
        self.prefix = prefix
        self.format = format
        self.shuffle = shuffle
        self.seed = seed
        self.drop_remainder = drop_remainder
        self.map = map
        self.epoch = 0
        self._client = client
        self._rank = rank
        self._world = world_size
        self._prefetch = prefetch_bytes
        # What the next iteration resumes from, and where this one stands.
        self._resume: Optional[Dict[str, Any]] = None
        self._position: Optional[Dict[str, Any]] = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch to iterate next: the order is reshuffled from
        (seed, epoch), the same on every rank."""
        self.epoch = epoch

    def ranks(self) -> Tuple[int, int]:
        """(rank, world size) this dataset splits its shards by."""
        if self._world is not None:
            return self._rank, self._world
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                return dist.get_rank(), dist.get_world_size()
        except (ImportError, RuntimeError):
            pass
        if "WORLD_SIZE" in os.environ:
            world = int(os.environ["WORLD_SIZE"])
            rank = int(os.environ.get("RANK", "0"))
            if world < 1 or not 0 <= rank < world:
                raise ValueError(f"RANK={rank} WORLD_SIZE={world}: the rank must be below the world size")
            return rank, world
        return 0, 1

    def _client_here(self) -> Client:
        if self._client is None:
            self._client = Client()
        return self._client

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        rank, world = self.ranks()
        stream = ShardStream(
            self.prefix,
            rank=rank * workers + worker,
            world=world * workers,
            epoch=self.epoch,
            seed=self.seed,
            shuffle=self.shuffle,
            drop_remainder=self.drop_remainder,
            client=self._client_here(),
            prefetch_bytes=self._prefetch,
        )
        resume, self._resume = self._resume, None
        skips: Dict[str, int] = {}
        if resume is not None:
            states: List[Dict[str, Any]] = resume["states"] if "states" in resume else [resume]
            for state in states:
                partial = state.get("partial")
                if partial:
                    skips[partial["path"]] = max(skips.get(partial["path"], 0), partial["skip"])
            if "states" in resume:
                stream.resume_all([s["cursor"] for s in states])
            else:
                stream.resume(resume["cursor"])
        return self._items(stream, skips)

    def _items(self, stream: ShardStream, skips: Dict[str, int]) -> Iterator[Any]:
        before = stream.state()
        self._position = {"cursor": before, "partial": None}
        apply = self.map
        shards = iter(stream) if self.format == "raw" else stream.tar_members()
        for path, data in shards:
            after = stream.state()
            skip = skips.pop(path, 0)
            if self.format == "raw":
                self._position = {"cursor": after, "partial": None}
                if not skip:
                    yield apply((path, data)) if apply else (path, data)
            else:
                for index, sample in enumerate(tar_group(path, data)):
                    if index < skip:
                        continue
                    self._position = {"cursor": before, "partial": {"path": path, "skip": index + 1}}
                    yield apply(sample) if apply else sample
                self._position = {"cursor": after, "partial": None}
            before = after

    def state_dict(self) -> Dict[str, Any]:
        """Where this (worker's) iteration stands: JSON-serializable."""
        if self._position is not None:
            return {"version": 1, "epoch": self.epoch, **self._position}
        if self._resume is not None:
            return dict(self._resume)
        return {"version": 1, "epoch": self.epoch, "cursor": None, "partial": None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Resumes the next iteration from `state` (one `state_dict()`, or
        `{"states": [...]}` with every old rank's and worker's)."""
        if "states" in state:
            states = [s for s in state["states"] if s.get("cursor") is not None]
            self._resume = {"states": states} if states else None
        elif state.get("cursor") is not None:
            self._resume = dict(state)
        else:
            self._resume = None
        if "epoch" in state:
            self.epoch = state["epoch"]
        self._position = None
