"""WebDataset samples from tar shards, as `webdataset` groups them.

A sample is the run of consecutive tar members that share a key: the
member's path up to the first dot of its file name ("a/b.cls" and
"a/b.jpg" are sample "a/b" with entries "cls" and "jpg"). Each sample is a
dict with `__key__`, `__url__` (the shard's path) and one entry per
extension: `cls` as an int, `json` parsed, `txt` as str, everything else as
bytes.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any, Dict, Iterable, Iterator, Tuple

__all__ = ["samples", "group", "decode"]


def _split(name: str):
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return None
    return name[:dot], name[dot + 1 :].lower()


def decode(extension: str, data: bytes) -> Any:
    """The value of one entry: `.cls` an int, `.json` parsed, `.txt` str."""
    last = extension.rsplit(".", 1)[-1]
    if last == "cls":
        return int(data.decode("utf-8").strip())
    if last == "json":
        return json.loads(data)
    if last == "txt":
        return data.decode("utf-8")
    return data


def group(url: str, members: Iterable[Tuple[str, bytes]]) -> Iterator[Dict[str, Any]]:
    """The samples of a tar shard read from `url`, given its regular files
    (name, bytes) in archive order."""
    current: Dict[str, Any] = {}
    for name, payload in members:
        split = _split(name)
        if split is None or split[0].rsplit("/", 1)[-1].startswith("__"):
            continue
        key, extension = split
        if current and current["__key__"] != key:
            yield current
            current = {}
        if not current:
            current = {"__key__": key, "__url__": url}
        current[extension] = decode(extension, payload)
    if current:
        yield current


def samples(url: str, data: bytes) -> Iterator[Dict[str, Any]]:
    """The samples of one tar shard (`data`, read from `url`), in order,
    parsed with Python's `tarfile`."""
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r|")
    except tarfile.TarError as e:
        raise ValueError(f"{url}: not a tar file ({e})") from None

    def members() -> Iterator[Tuple[str, bytes]]:
        try:
            for member in archive:
                if member.isfile():
                    extracted = archive.extractfile(member)
                    yield member.name, extracted.read() if extracted is not None else b""
        except tarfile.TarError as e:
            raise ValueError(f"{url}: a broken tar file ({e})") from None

    with archive:
        yield from group(url, members())
