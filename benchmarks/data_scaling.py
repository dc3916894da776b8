"""Where `benchmarks/data.py`'s Ray Data scaling is lost: the cache stage's own unit in plain processes, and
when each Ray actor starts and runs its units.

    PYTHONPATH=benchmarks uv run python benchmarks/data_scaling.py

(PYTHONPATH: the Ray actors unpickle this module's classes by name.) The same 256 images as `data.py`'s pipeline
benchmark. Plain: `pea.data.cache.CacheUnit` over the 16 bucketed shards in one process, then in two processes
of 8 shards each, each with one torch thread (as a Ray actor with one CPU has); `plain_work_efficiency` is the
one-process time over twice the slower of the two. Ray: bucket + cache through `pea.data.parallel.RayData` with
`--workers` actors, each unit timed inside its actor: when the actor's factory started and finished (its models
loaded) and when each unit ran, in seconds from the bucket stage's start. The last line is one JSON object.
"""

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import torch
from data import SlimSDXLVAE, _folder

from pea.cluster import connect
from pea.data.buckets import BucketConfig
from pea.data.cache import CacheUnit, cache_features
from pea.data.harvest import HarvestConfig, harvest
from pea.data.index import indexed_shards
from pea.data.parallel import RayData
from pea.data.shards import bucket
from pea.data.sources import SourceSpec
from pea.data.translate import translate
from pea.layout import shards_dir
from pea.profiles import load_profile
from pea.storage import Storage

BUCKETS = BucketConfig(side=512, step=64, samples_per_shard=64)


def _stages_before_cache(root: Path, folder: Path, mapper=None) -> list[str]:
    storage = Storage(str(root))
    harvest(storage, "ko", SourceSpec(name="bench", kind="folder", uri=str(folder)), HarvestConfig(samples_per_shard=64))
    translate(storage, "ko", "kor_Hang", "none", lambda: None)
    manifest = bucket(storage, "ko", BUCKETS, **({"mapper": mapper} if mapper else {}))
    return [row["path"] for row in indexed_shards(storage, shards_dir("ko"), manifest)]


def _plain(root: str, paths: list[str], queue) -> None:
    torch.set_num_threads(1)
    unit = CacheUnit(Storage(root), "ko", "sdxl", "plain", SlimSDXLVAE(), "torch.float16")()
    start = time.perf_counter()
    for path in paths:
        unit({"path": path})
    queue.put(time.perf_counter() - start)


def plain_seconds(root: Path, paths: list[str], processes: int) -> list[float]:
    """Seconds of unit work in each of `processes` plain processes sharing `paths`."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_plain, args=(str(root), paths[i::processes], queue)) for i in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return sorted(queue.get() for _ in procs)


class Timed:
    """A unit factory that stamps its factory's start and end and each unit's start and end (wall clock)."""

    def __init__(self, make):
        self.make = make

    def __call__(self):
        made = [time.time()]
        unit = self.make()
        made.append(time.time())

        def run(item: dict) -> dict:
            start = time.time()
            out = unit(item)
            return {**out, "_times": [*made, start, time.time(), os.getpid()]}
        return run


def ray_timeline(tmp: Path, folder: Path, workers: int) -> dict:
    profile = load_profile("local", env={"PEA_DATA_DIR": str(tmp / "data"), "PEA_RAY__DATA_WORKERS": "2"}, cwd=tmp)
    connect(profile)
    inner = RayData(lambda: connect(profile), workers=workers)
    times: list[list[float]] = []

    def mapper(make, items):
        for row in inner(Timed(make), items):
            times.append(row.pop("_times"))
            yield row

    zero = time.time()
    _stages_before_cache(tmp / "ray", folder, mapper)
    bucketed = time.time()
    cache_features(Storage(str(tmp / "ray")), "ko", "sdxl", SlimSDXLVAE(), dtype=torch.float16, mapper=mapper)
    units = [{"pid": t[4], "made": [round(t[0] - zero, 1), round(t[1] - zero, 1)],
              "unit": [round(t[2] - zero, 1), round(t[3] - zero, 1)]} for t in times]
    return {"workers": workers, "bucket_s": round(bucketed - zero, 1), "cache_s": round(time.time() - bucketed, 1),
            "units": units}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = _folder(tmp / "images", args.images, [(640, 480), (480, 640), (800, 450), (512, 512)], seed=2)
        paths = _stages_before_cache(tmp / "plain", folder)
        one, two = plain_seconds(tmp / "plain", paths, 1), plain_seconds(tmp / "plain", paths, 2)
        timeline = ray_timeline(tmp, folder, args.workers)
    for unit in timeline["units"]:
        print(unit)
    print(json.dumps({"plain_1_process_s": round(one[0], 1), "plain_2_processes_s": [round(s, 1) for s in two],
                      "plain_work_efficiency": round(one[0] / (2 * two[-1]), 3),
                      **{k: v for k, v in timeline.items() if k != "units"}}))


if __name__ == "__main__":
    main()
