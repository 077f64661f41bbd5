"""shardfs: a distributed chunk file system for machine-learning data.

    import shardfs
    fs = shardfs.Client()                       # SHARDFS_META, else the local cluster
    fs.put(b"hello", "/demo/hello.txt")
    with fs.open("/demo/hello.txt") as f:
        assert f.read() == b"hello"
    for path, data in shardfs.ShardStream("/datasets/train", rank=0, world=2):
        ...

Every byte read is verified against its chunk's BLAKE3 id. Calls release
the GIL while they wait on the network, answer Ctrl-C, and raise the
exceptions Python code expects: FileNotFoundError, FileExistsError,
IsADirectoryError, NotADirectoryError, PermissionError, ConnectionError
(no metaserver reachable), TimeoutError, ValueError (bad arguments), and
OSError (a chunk no replica could serve).

`shardfs.torch.ShardDataset` is the PyTorch dataset; `shardfs.fsspec`
registers the `shardfs://` protocol with fsspec.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import _shardfs

__all__ = ["Client", "File", "ShardStream", "default_meta", "DEFAULT_META"]

#: The local cluster that `deploy/local-cluster.sh up` starts.
DEFAULT_META = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"

PathLike = Union[str, "os.PathLike[str]"]


def default_meta() -> str:
    """The metaservers to use: `SHARDFS_META`, else the local cluster."""
    return os.environ.get("SHARDFS_META") or DEFAULT_META


def _addresses(meta: Union[None, str, Sequence[str]]) -> List[str]:
    if meta is None:
        meta = default_meta()
    if isinstance(meta, str):
        meta = meta.split(",")
    addrs = [a.strip() for a in meta if a and a.strip()]
    if not addrs:
        raise ValueError(
            "no metaserver address given: pass meta='HOST:PORT,...' or set SHARDFS_META"
        )
    return addrs


class Client:
    """A connection to a shardfs cluster.

    `meta` is "host:port,host:port" (or a list); by default `SHARDFS_META`,
    then the local cluster. Servers are verified over TLS with the cluster
    CA's certificate `ca` (by default `SHARDFS_CA`, which `source
    cluster.env` sets); `insecure=True` (or `SHARDFS_INSECURE=1`) talks
    plaintext to a cluster started with `--insecure`. The connection is checked at once unless
    `connect=False`. A client may be used from several threads, and in
    processes forked or spawned from the one that made it (it reconnects
    there by itself; it pickles as its settings).
    """

    def __init__(
        self,
        meta: Union[None, str, Sequence[str]] = None,
        *,
        replication: int = 3,
        chunk_size: Optional[int] = None,
        read_ahead: Optional[int] = None,
        ca: Union[None, str, "os.PathLike[str]"] = None,
        insecure: bool = False,
        connect: bool = True,
    ) -> None:
        self._settings = dict(
            meta=_addresses(meta),
            replication=replication,
            chunk_size=chunk_size,
            read_ahead=read_ahead,
            ca=None if ca is None else os.fspath(ca),
            insecure=insecure,
        )
        self._native = _native(self._settings)
        if connect:
            self._native.connect()

    def __getstate__(self) -> Dict[str, Any]:
        return dict(self._settings)

    def __setstate__(self, settings: Dict[str, Any]) -> None:
        self._settings = settings
        self._native = _native(settings)

    def __repr__(self) -> str:
        return f"shardfs.Client(meta={','.join(self._settings['meta'])!r})"

    @property
    def meta(self) -> List[str]:
        return list(self._settings["meta"])

    # Reading

    def open(
        self,
        path: str,
        mode: str = "rb",
        *,
        buffering: int = -1,
        read_ahead: Optional[int] = None,
    ) -> Union["File", io.BufferedReader, "Writer"]:
        """Opens `path`: "rb" gives a binary file object (read, readinto,
        seek, tell, a context manager; buffered unless `buffering=0`), "wb"
        one whose bytes are stored at `path` when it is closed."""
        if mode in ("wb", "w+b", "xb"):
            return Writer(self, path, exclusive=mode == "xb")
        if mode not in ("rb", "r"):
            raise ValueError(f"mode {mode!r}: shardfs files open as 'rb' or 'wb'")
        raw = File(self._native.open(path, read_ahead))
        if buffering == 0:
            return raw
        size = buffering if buffering > 1 else 1 << 20
        return io.BufferedReader(raw, buffer_size=size)

    def read(self, path: str, offset: int = 0, length: Optional[int] = None) -> bytes:
        """`length` bytes of `path` from `offset` (all the rest by default);
        only the chunks covering them are fetched."""
        reader = self._native.open(path, 0)
        try:
            reader.seek(offset)
            return reader.read(length)
        finally:
            reader.close()

    def get(self, remote: str, local: Optional[PathLike] = None) -> Union[bytes, int]:
        """The bytes of `remote`; or, given `local`, downloads it there
        (written beside and renamed into place once every chunk verified)
        and returns its size."""
        if local is None:
            return self.read(remote)
        return self._native.get_file(remote, os.fspath(local))

    # Writing

    def put(
        self,
        source: Union[bytes, bytearray, memoryview, PathLike],
        remote: str,
        replication: Optional[int] = None,
        chunk_size: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Stores `source` (bytes, or the path of a local file) at `remote`,
        committed atomically (a reader sees the old file or the new one);
        missing parent directories are created, and chunks the cluster
        already holds are not sent again. Returns what was done: `bytes`,
        `chunks`, `bytes_sent`, `chunks_deduplicated`, `replaced`."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = source if isinstance(source, bytes) else bytes(source)
            return self._native.put_bytes(data, remote, replication, chunk_size)
        if isinstance(source, str) or hasattr(source, "__fspath__"):
            return self._native.put_file(os.fspath(source), remote, replication, chunk_size)
        raise TypeError(
            f"put takes bytes or a local path, not {type(source).__name__}"
        )

    # The namespace

    def stat(self, path: str) -> Dict[str, Any]:
        """`name`, `path`, `type` ("file"/"directory"), `size`, `mtime`
        (seconds since the epoch), and for files `replication`,
        `content_id` and `chunks` (how many)."""
        return self._native.stat(path)

    def chunks(self, path: str) -> List[Dict[str, Any]]:
        """A file's chunks: `id`, `offset`, `length`, `locations`."""
        return self._native.chunks(path)

    def ls(self, path: str = "/", detail: bool = False) -> List[Any]:
        """The entries of a directory in name order (a file lists itself):
        their names, or with `detail` their `stat` dicts."""
        entries = self._native.ls(path)
        if detail:
            return entries
        return [e["name"] for e in entries]

    def walk(self, path: str = "/") -> Iterator[Tuple[str, List[str], List[str]]]:
        """Like `os.walk`: (directory, subdirectory names, file names), top
        down."""
        entries = self._native.ls(path)
        dirs = [e["name"] for e in entries if e["type"] == "directory"]
        files = [e["name"] for e in entries if e["type"] == "file"]
        yield path, dirs, files
        for name in dirs:
            yield from self.walk(path.rstrip("/") + "/" + name)

    def exists(self, path: str) -> bool:
        try:
            self._native.stat(path)
            return True
        except FileNotFoundError:
            return False

    def isdir(self, path: str) -> bool:
        try:
            return self._native.stat(path)["type"] == "directory"
        except FileNotFoundError:
            return False

    def isfile(self, path: str) -> bool:
        try:
            return self._native.stat(path)["type"] == "file"
        except FileNotFoundError:
            return False

    def mkdir(self, path: str, parents: bool = True) -> bool:
        """Creates a directory (and its parents); False if it existed."""
        return self._native.mkdir(path, parents)

    def rm(self, path: str, recursive: bool = False) -> int:
        """Deletes a file or a directory (`recursive` when it is not
        empty); returns how many files went."""
        return self._native.rm(path, recursive)

    def mv(self, source: str, destination: str) -> None:
        """Renames a file or directory (atomic; nothing is copied)."""
        self._native.mv(source, destination)

    def counters(self) -> Dict[str, int]:
        """What this client sent and received in this process."""
        return json.loads(self._native.counters())


def _native(settings: Dict[str, Any]) -> "_shardfs.Client":
    return _shardfs.Client(
        settings["meta"],
        replication=settings["replication"],
        chunk_size=settings["chunk_size"],
        read_ahead=settings["read_ahead"],
        ca=settings.get("ca"),
        insecure=settings.get("insecure", False),
    )


class File(io.RawIOBase):
    """An open shardfs file (read-only, seekable). `Client.open` wraps it
    in an `io.BufferedReader` unless asked not to."""

    def __init__(self, reader: "_shardfs.Reader") -> None:
        super().__init__()
        self._reader = reader
        self.name = reader.path

    @property
    def size(self) -> int:
        return self._reader.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._reader.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._reader.tell() + offset
        elif whence == io.SEEK_END:
            target = self._reader.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        return self._reader.seek(target)

    def read(self, size: int = -1) -> bytes:
        self._checkClosed()
        return self._reader.read(None if size is None or size < 0 else size)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()


class Writer(io.RawIOBase):
    """A file being written: its bytes are kept in memory and stored (one
    atomic commit) when it is closed. Nothing is stored if the `with`
    block raises."""

    def __init__(self, client: Client, path: str, exclusive: bool = False) -> None:
        super().__init__()
        self._client = client
        self._buffer = io.BytesIO()
        self._failed = False
        self.name = path
        if exclusive and client.exists(path):
            raise FileExistsError(f"{path}: already exists")

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._checkClosed()
        return self._buffer.write(data)

    def tell(self) -> int:
        return self._buffer.tell()

    def __exit__(self, kind, value, traceback) -> None:
        self._failed = kind is not None
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._failed:
                self._client.put(self._buffer.getbuffer(), self.name)
        finally:
            self._buffer = io.BytesIO()
            super().close()


class ShardStream:
    """This rank's shards under `prefix`, in a deterministic order:
    iterating yields `(path, bytes)` with every byte verified, fetched ahead
    of the consumer in parallel.

    Shards are split across `world` ranks from the epoch's shuffled order
    (from `seed` and `epoch`; `shuffle=False`: path order). Every rank gets
    the same number: the remainder is padded by wrapping around, or cut
    with `drop_remainder`. `state()` is a JSON-serializable dict to resume
    from: `resume(state)` continues this rank exactly; `resume_all(states)`
    takes every old rank's state and splits what none of them had reached
    across this (possibly different) world.
    """

    def __init__(
        self,
        prefix: str,
        rank: int = 0,
        world: int = 1,
        epoch: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = False,
        *,
        client: Optional[Client] = None,
        prefetch_bytes: Optional[int] = None,
    ) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(
                f"rank {rank} of world {world}: the rank must be below the world size (at least 1)"
            )
        self._client = client if client is not None else Client()
        self._options = dict(
            prefix=prefix,
            rank=rank,
            world=world,
            epoch=epoch,
            seed=seed,
            shuffle=shuffle,
            drop_remainder=drop_remainder,
            prefetch_bytes=prefetch_bytes,
        )
        self._resume: Optional[str] = None
        self._resume_all: Optional[List[str]] = None
        self._native: Optional["_shardfs.Shards"] = None

    def _stream(self) -> "_shardfs.Shards":
        if self._native is None:
            self._native = self._client._native.shards(
                resume=self._resume, resume_all=self._resume_all, **self._options
            )
        return self._native

    def _before_start(self, what: str) -> None:
        if self._native is not None:
            raise RuntimeError(f"{what} must come before the stream is iterated")

    def resume(self, state: Dict[str, Any]) -> "ShardStream":
        """Continues from `state` (taken with `state()`); its epoch and seed
        win. Returns the stream."""
        self._before_start("resume")
        self._resume = json.dumps(state)
        return self

    def resume_all(self, states: Sequence[Dict[str, Any]]) -> "ShardStream":
        """Continues from every old rank's state (any world size): the
        shards none of them had yielded are split across this world, each
        once. Returns the stream."""
        self._before_start("resume_all")
        self._resume_all = [json.dumps(s) for s in states]
        return self

    def state(self) -> Dict[str, Any]:
        """Where to resume after the shards yielded so far."""
        return json.loads(self._stream().state())

    def __iter__(self) -> Iterator[Tuple[str, bytes]]:
        return iter(self._stream())

    def tar_members(self) -> Iterator[Tuple[str, List[Tuple[str, bytes]]]]:
        """Iterates the shards as tar archives: `(path, [(name, bytes),
        ...])` with the regular files of each, parsed natively (the shard
        itself is never copied into Python)."""
        stream = self._stream()
        while True:
            item = stream.next_members()
            if item is None:
                return
            yield item
