"""Run a stage's unit of work (a raw shard to bucket, a bucketed shard to cache, a caption table to translate)
over a list of inputs: in this process, or as a Ray Data map over a pool of workers on the profile's cluster.

A unit is made by a picklable factory (`make() -> fn`, fn(dict) -> dict), so that a worker that needs models
loads them once (Ray Data's actor pool calls the factory once per actor) and the same unit runs unchanged in
both. Results come back as they finish, in any order; a stage records each one as it arrives, so a killed run
keeps what finished and redoes the rest under the same names.
"""

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Unit = Callable[[dict], dict]
Mapper = Callable[[Callable[[], Unit], list[dict]], Iterator[dict]]


def in_process(make: Callable[[], Unit], items: list[dict]) -> Iterator[dict]:
    """The units one after another here: the per-unit functions' own tests, and a stage with nothing to do."""
    if not items:
        return
    unit = make()
    for item in items:
        yield unit(item)


class _RayUnit:
    """What a Ray Data actor holds: the unit, made once; rows travel as one JSON string each (Arrow would
    otherwise turn a unit's nested, varying dicts into struct columns)."""

    def __init__(self, make: Callable[[], Unit]):
        self.unit = make()

    def __call__(self, row: dict) -> dict:
        return {"out": json.dumps(self.unit(json.loads(row["in"])))}


@dataclass(frozen=True)
class RayData:
    """A Ray Data map over `workers` actors of `cpus` CPUs and `gpus` GPUs each, on the Ray that
    `connect` reaches (pea.cluster.connect: the profile's cluster, or a local one on 127.0.0.1)."""

    connect: Callable[[], None]
    workers: int = 1
    cpus: float = 1
    gpus: float = 0

    def __call__(self, make: Callable[[], Unit], items: list[dict]) -> Iterator[dict]:
        if not items:
            return
        import ray.data

        self.connect()
        rows = [{"in": json.dumps(item)} for item in items]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # one input a block: a task each
        # a unit is a whole shard (seconds to minutes): one at a time per actor, so none waits queued behind a
        # busy actor while another is idle (Ray Data queues several per actor by default, for small tasks)
        pool = ray.data.ActorPoolStrategy(size=min(self.workers, len(rows)), max_tasks_in_flight_per_actor=1)
        ds = ds.map(_RayUnit, fn_constructor_args=(make,), num_cpus=self.cpus, num_gpus=self.gpus, compute=pool)
        for row in ds.iter_rows():
            yield json.loads(row["out"])
