"""What the two-process DDP tests share (tests/test_train_sync.py, tests/test_baselines.py): a free loopback
port for the gloo rendezvous, and each rank's batch handed to the spawned processes as safetensors."""

import socket
from dataclasses import fields
from pathlib import Path

from safetensors.torch import load_file, save_file

from pea.kd_types import KDBatch, NullConditioning


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_inputs(folder: Path, batches: list[KDBatch], null: NullConditioning) -> None:
    """The ranks' batches and the null conditioning as safetensors (tensors only: the keys are fixed)."""
    tensors = {f"null.{f.name}": getattr(null, f.name).contiguous() for f in fields(null)}
    for r, batch in enumerate(batches):
        tensors |= {f"{r}.{f.name}": getattr(batch, f.name).contiguous() for f in fields(batch) if f.name != "keys"}
    save_file(tensors, folder / "inputs.safetensors")


def load_inputs(folder: Path, rank: int) -> tuple[KDBatch, NullConditioning]:
    t = load_file(folder / "inputs.safetensors")
    null = NullConditioning(**{f.name: t[f"null.{f.name}"] for f in fields(NullConditioning)})
    batch = KDBatch(**{f.name: t[f"{rank}.{f.name}"] for f in fields(KDBatch) if f.name != "keys"}, keys=list("abcd"))
    return batch, null
