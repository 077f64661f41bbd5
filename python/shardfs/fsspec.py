"""An fsspec file system for `shardfs://` URLs.

    import pandas as pd
    df = pd.read_parquet("shardfs:///datasets/table.parquet")

    import pyarrow.dataset as ds
    from shardfs.fsspec import ShardFileSystem
    table = ds.dataset("/datasets/table", filesystem=ShardFileSystem(), format="parquet").to_table()

`shardfs:///path` uses `SHARDFS_META` (else the local cluster);
`shardfs://host:port/path` names a metaserver. Reads are ranged: only the
chunks covering the bytes asked for are fetched (and verified). Writes are
kept in memory and stored, in one atomic commit, when the file closes.
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, List, Optional

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from . import Client

__all__ = ["ShardFileSystem", "ShardFile"]


class ShardFileSystem(AbstractFileSystem):
    protocol = "shardfs"
    root_marker = "/"

    def __init__(
        self,
        meta: Optional[str] = None,
        client: Optional[Client] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.client = client if client is not None else Client(meta)

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("shardfs://"):
            path = path[len("shardfs://") :]
            # shardfs://host:port/path: the address is not part of the path.
            if not path.startswith("/"):
                slash = path.find("/")
                path = "/" if slash < 0 else path[slash:]
        if not path.startswith("/"):
            path = "/" + path
        if len(path) > 1:
            path = path.rstrip("/")
        return path

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> Dict[str, Any]:
        if path.startswith("shardfs://") and not path.startswith("shardfs:///"):
            host = path[len("shardfs://") :].split("/", 1)[0]
            if host:
                return {"meta": host}
        return {}

    @staticmethod
    def _entry(entry: Dict[str, Any]) -> Dict[str, Any]:
        out = dict(entry)
        out["name"] = entry["path"]
        return out

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> List[Any]:
        path = self._strip_protocol(path)
        entries = [self._entry(e) for e in self.client.ls(path, detail=True)]
        if detail:
            return entries
        return [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> Dict[str, Any]:
        path = self._strip_protocol(path)
        return self._entry(self.client.stat(path))

    def modified(self, path: str) -> datetime.datetime:
        mtime = self.info(path)["mtime"]
        return datetime.datetime.fromtimestamp(mtime, tz=datetime.timezone.utc)

    created = modified

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Optional[int] = None,
        autocommit: bool = True,
        cache_options: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> "ShardFile":
        path = self._strip_protocol(path)
        return ShardFile(
            self,
            path,
            mode=mode,
            block_size=block_size or "default",
            autocommit=autocommit,
            cache_options=cache_options,
            **kwargs,
        )

    def cat_file(self, path: str, start: Optional[int] = None, end: Optional[int] = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        size = self.client.stat(path)["size"]
        start = 0 if start is None else (start + size if start < 0 else start)
        end = size if end is None else (end + size if end < 0 else end)
        start, end = max(0, min(start, size)), max(0, min(end, size))
        if end <= start:
            return b""
        return self.client.read(path, start, end - start)

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        self.client.put(value, self._strip_protocol(path))

    def put_file(self, lpath: str, rpath: str, callback: Any = None, **kwargs: Any) -> None:
        if self._isdir_local(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        self.client.put(lpath, self._strip_protocol(rpath))

    @staticmethod
    def _isdir_local(path: str) -> bool:
        import os

        return os.path.isdir(path)

    def get_file(self, rpath: str, lpath: str, callback: Any = None, outfile: Any = None, **kwargs: Any) -> None:
        rpath = self._strip_protocol(rpath)
        if self.isdir(rpath):
            import os

            os.makedirs(lpath, exist_ok=True)
            return
        self.client.get(rpath, lpath)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if not create_parents and self.exists(path):
            raise FileExistsError(f"{path}: already exists")
        self.client.mkdir(path, parents=True)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        if not exist_ok and self.exists(path):
            raise FileExistsError(f"{path}: already exists")
        self.client.mkdir(path, parents=True)

    def rmdir(self, path: str) -> None:
        self.client.rm(self._strip_protocol(path), recursive=False)

    def _rm(self, path: str) -> None:
        self.client.rm(self._strip_protocol(path), recursive=False)

    def rm(self, path: Any, recursive: bool = False, maxdepth: Optional[int] = None) -> None:
        paths = path if isinstance(path, list) else [path]
        for one in paths:
            self.client.rm(self._strip_protocol(one), recursive=recursive)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: Optional[int] = None, **kwargs: Any) -> None:
        self.client.mv(self._strip_protocol(path1), self._strip_protocol(path2))


class ShardFile(AbstractBufferedFile):
    """A file opened through fsspec: ranged reads of verified chunks, or a
    write stored when it closes."""

    def __init__(self, fs: ShardFileSystem, path: str, mode: str = "rb", **kwargs: Any) -> None:
        self._reader = None
        super().__init__(fs, path, mode=mode, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        if self._reader is None:
            # No read-ahead: a ranged read fetches only the chunks it covers.
            self._reader = self.fs.client._native.open(self.path, 0)
        self._reader.seek(start)
        return self._reader.read(max(0, end - start))

    def _initiate_upload(self) -> None:
        self._parts: List[bytes] = []

    def _upload_chunk(self, final: bool = False) -> bool:
        self._parts.append(self.buffer.getvalue())
        if final:
            self.fs.client.put(b"".join(self._parts), self.path)
            self._parts = []
        return True

    def close(self) -> None:
        super().close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
