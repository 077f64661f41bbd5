"""`python -m shardfs.bench`: the Python loader against its peers, in one run.

Writes a WebDataset-format dataset (tar shards made by `webdataset`) to a
local directory and to the cluster, then reads it every way a training
job might, and prints samples/s and MB/s for each:

- `shardfs stream --null` (the Rust stream, one process: the ceiling);
- `ShardDataset` through a DataLoader with 0 and 2 workers;
- `webdataset` reading the same shards from local disk (2 workers);
- `webdataset` reading them through the FUSE mount (2 workers; root, or
  fusermount3, is needed: skipped otherwise).

Each is the median of `--rounds` runs. The cluster comes from
`SHARDFS_META` (or the local cluster); `--bin` is the directory of the
`shardfs` binary (default: target/release, then PATH).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple


def _shardfs_binary(directory: Optional[str]) -> str:
    candidates = []
    if directory:
        candidates.append(Path(directory) / "shardfs")
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidates.append(parent / "target" / "release" / "shardfs")
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which("shardfs")
    if found:
        return found
    raise SystemExit("bench: no shardfs binary found (pass --bin DIR)")


def _write_dataset(local: Path, shards: int, samples: int, sample_bytes: int) -> int:
    import webdataset

    total = 0
    with webdataset.ShardWriter(str(local / "shard-%05d.tar"), maxcount=samples, verbose=0) as sink:
        for i in range(shards * samples):
            seed = hashlib.sha256(str(i).encode()).digest()
            blob = (seed * (sample_bytes // len(seed) + 1))[:sample_bytes]
            sink.write({"__key__": f"s{i:07d}", "cls": i % 1000, "bin": blob})
            total += sample_bytes
    return total


def _time(run: Callable[[], Tuple[int, int]], rounds: int) -> Tuple[float, int, int]:
    times = []
    count = size = 0
    for _ in range(rounds):
        started = time.perf_counter()
        count, size = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), count, size


def _count(items) -> Tuple[int, int]:
    count = size = 0
    for sample in items:
        count += 1
        size += sum(len(v) for k, v in sample.items() if isinstance(v, (bytes, bytearray)))
    return count, size


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardfs.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--samples", type=int, default=128, help="samples per shard")
    parser.add_argument("--sample-bytes", type=int, default=256 << 10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bin", help="directory holding the shardfs binary")
    parser.add_argument("--prefix", default="/bench-python")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    import torch.utils.data
    import webdataset

    import shardfs
    from shardfs.torch import ShardDataset

    binary = _shardfs_binary(args.bin)
    client = shardfs.Client()
    work = Path(tempfile.mkdtemp(prefix="shardfs-bench-"))
    local = work / "local"
    local.mkdir()
    results: Dict[str, Dict[str, float]] = {}
    try:
        print(f"bench: writing {args.shards} shards of {args.samples} samples", file=sys.stderr)
        total = _write_dataset(local, args.shards, args.samples, args.sample_bytes)
        names = sorted(os.listdir(local))
        client.rm(args.prefix, recursive=True) if client.exists(args.prefix) else None
        for name in names:
            client.put(local / name, f"{args.prefix}/{name}")
        shard_bytes = sum((local / n).stat().st_size for n in names)
        expected = args.shards * args.samples

        def record(name: str, seconds: float, count: int, size: int, note: str = "") -> None:
            if count != expected and name != "shardfs stream --null":
                raise SystemExit(f"bench: {name} read {count} samples, expected {expected}")
            results[name] = {
                "seconds": seconds,
                "samples_per_s": count / seconds,
                "mb_per_s": size / 1e6 / seconds,
            }
            print(f"bench: {name}: {count / seconds:,.0f} samples/s, {size / 1e6 / seconds:,.0f} MB/s {note}",
                  file=sys.stderr)

        def stream_cli() -> Tuple[int, int]:
            out = subprocess.run(
                [binary, "stream", args.prefix, "--null", "--json"],
                check=True, capture_output=True, text=True,
                env=dict(os.environ, SHARDFS_META=",".join(client.meta)),
            )
            summary = json.loads(out.stdout.strip().splitlines()[-1])
            return summary["shards"] * args.samples, summary["bytes"]

        seconds, count, size = _time(stream_cli, args.rounds)
        # The stream reads whole shards: their bytes, as the tar files hold them.
        results["shardfs stream --null"] = {
            "seconds": seconds,
            "samples_per_s": count / seconds,
            "mb_per_s": size / 1e6 / seconds,
        }
        print(f"bench: shardfs stream --null: {size / 1e6 / seconds:,.0f} MB/s of shards", file=sys.stderr)

        def raw() -> Tuple[int, int]:
            count = size = 0
            for _path, data in ShardDataset(args.prefix, format="raw", client=client):
                count += args.samples
                size += len(data)
            return count, size

        seconds, count, size = _time(raw, args.rounds)
        results["ShardDataset raw shards, 0 workers"] = {
            "seconds": seconds,
            "samples_per_s": count / seconds,
            "mb_per_s": size / 1e6 / seconds,
        }

        for workers in (0, 2):
            def loader(workers=workers) -> Tuple[int, int]:
                ds = ShardDataset(args.prefix, format="webdataset", client=client)
                return _count(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers))

            record(f"ShardDataset, {workers} workers", *_time(loader, args.rounds))

        def local_wds(root: Path) -> Callable[[], Tuple[int, int]]:
            urls = [str(root / n) for n in names]

            def run() -> Tuple[int, int]:
                ds = webdataset.WebDataset(urls, shardshuffle=False, empty_check=False)
                return _count(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2))

            return run

        record("webdataset, local disk, 2 workers", *_time(local_wds(local), args.rounds))

        mount = work / "mnt"
        mount.mkdir()
        mounted = subprocess.Popen(
            [binary, "mount", args.prefix, str(mount)],
            env=dict(os.environ, SHARDFS_META=",".join(client.meta)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not os.path.ismount(mount):
                if mounted.poll() is not None:
                    break
                time.sleep(0.1)
            if os.path.ismount(mount):
                record("webdataset, FUSE mount, 2 workers", *_time(local_wds(mount), args.rounds))
            else:
                print("bench: the FUSE mount did not come up (root or fusermount3 needed): skipped",
                      file=sys.stderr)
        finally:
            subprocess.run([binary, "umount", str(mount)], capture_output=True)
            mounted.terminate()
            try:
                mounted.wait(timeout=10)
            except subprocess.TimeoutExpired:
                mounted.kill()
        client.rm(args.prefix, recursive=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ceiling = results["shardfs stream --null"]["mb_per_s"]
    summary = {
        "dataset": {"shards": args.shards, "samples": expected, "sample_bytes": args.sample_bytes,
                    "payload_bytes": total, "shard_bytes": shard_bytes},
        "results": results,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.shards} shards, {expected} samples of {args.sample_bytes} B "
          f"({shard_bytes / 1e6:,.0f} MB of tar), median of {args.rounds}")
    print(f"{'reader':38} {'samples/s':>10} {'MB/s':>8} {'vs stream':>10}")
    for name, r in results.items():
        ratio = r["mb_per_s"] / ceiling if ceiling else 0
        print(f"{name:38} {r['samples_per_s']:>10,.0f} {r['mb_per_s']:>8,.0f} {ratio:>9.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
