"""Read: batches for training from bucketed (image or feature) shards.

Every batch holds samples of a single bucket (one resolution). Shards are shuffled per epoch and dealt to
Ray Train workers by rank; samples pass through a shuffle buffer; all of it is seeded by (seed, epoch), so
a position (epoch, batches already yielded) is enough to resume: the stream is replayed without decoding
and the first `start` batches are skipped, so no sample is seen twice within an epoch. Every rank yields
the same number of batches per epoch, as DDP needs.
"""

import io
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pea.data.tars import iter_samples
from pea.storage import Storage


@dataclass(frozen=True)
class Position:
    epoch: int = 0
    batch: int = 0  # batches already yielded in this epoch


class BucketBatchLoader:
    def __init__(
        self,
        storage: Storage,
        prefix: tuple[str, ...],
        shards: list[dict],
        batch_size: int,
        collate: Callable[[list[dict]], object],
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 256,
    ):
        self.storage, self.prefix, self.shards = storage, prefix, shards
        self.batch_size, self.collate = batch_size, collate
        self.rank, self.world_size, self.seed, self.buffer = rank, world_size, seed, shuffle_buffer

    def _rank_shards(self, epoch: int, rank: int) -> list[dict]:
        order = sorted(self.shards, key=lambda s: s["path"])
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order[rank :: self.world_size]

    def batches_per_epoch(self, epoch: int = 0) -> int:
        def count(shards):
            per_bucket: dict[str, int] = {}
            for s in shards:
                key = "x".join(map(str, s["bucket"]))
                per_bucket[key] = per_bucket.get(key, 0) + s["samples"]
            return sum(n // self.batch_size for n in per_bucket.values())

        return min(count(self._rank_shards(epoch, r)) for r in range(self.world_size))

    def __call__(self, position: Position = Position()) -> Iterator[tuple[Position, object]]:
        """Yield (position after this batch, batch) from `position` to the end of that epoch."""
        limit = self.batches_per_epoch(position.epoch)
        rng = random.Random(f"{self.seed}-{position.epoch}-{self.rank}")
        pending: dict[tuple, list[dict]] = {}
        index = 0
        for sample in self._shuffled(self._rank_shards(position.epoch, self.rank), rng):
            group = pending.setdefault(sample["__bucket__"], [])
            group.append(sample)
            if len(group) == self.batch_size:
                del pending[sample["__bucket__"]]
                index += 1
                if index > position.batch:
                    yield Position(position.epoch, index), self.collate(group)
                if index == limit:
                    return

    def _shuffled(self, shards: list[dict], rng: random.Random) -> Iterator[dict]:
        buffer: list[dict] = []
        for shard in shards:
            parts = (*self.prefix, *shard["path"].split("/"))
            data = self.storage.read_bytes(*parts)
            for sample in iter_samples(io.BytesIO(data), self.storage.uri(*parts)):
                sample["__bucket__"] = tuple(shard["bucket"])
                buffer.append(sample)
                if len(buffer) >= self.buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))
        while buffer:
            yield buffer.pop(rng.randrange(len(buffer)))
