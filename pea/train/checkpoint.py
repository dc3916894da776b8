"""Training checkpoints: adapter (safetensors + config; for a baseline the bridge, and its UNet part in the
diffusers format pea.baselines writes; for a compression job the student UNet's diffusers folder), optimizer and schedule, step, loader position and every rank's noise
generator state, so that a resumed run continues exactly where the last checkpoint was
taken (each rank draws its own noise; with synchronised gradients every rank's draws shape the adapter)."""

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from pea.adapter import PEAAdapter, load_adapter
from pea.baselines import FineTuned
from pea.compress.student import load_student_weights, student_files
from pea.data.loader import Position
from pea.errors import PeaError
from pea.storage import write_files

RUN_CONFIG = "run-config.json"  # what a job was started with: in every checkpoint, and once per run (pea.train.run)
# pea.train.loop writes each checkpoint to a temporary folder, which Ray then copies to storage
UNet = torch.nn.Module  # a compression job's student (diffusers' UNet2DConditionModel)
_ELSEWHERE = "set TMPDIR to a folder on a disk with room (checkpoints are written there before Ray stores them)"


@dataclass
class TrainState:
    step: int = 0
    position: Position = field(default_factory=Position)
    samples: int = 0  # samples consumed by all workers together


def save_checkpoint(folder: Path, trained: PEAAdapter | FineTuned | UNet, optimizer, schedule, state: TrainState,
                    generator_states: list[torch.Tensor], config: dict) -> Path:
    """`generator_states[r]` is rank r's noise generator state (a uint8 tensor); `config` is what the job was
    started with (pea.train.run), kept with the weights it made. Everything is serialized in memory and written
    by write_files: torch's and safetensors' own writers report a full disk as a bare RuntimeError or
    SafetensorError, and leave half a file."""
    if isinstance(trained, (PEAAdapter, FineTuned)):
        trained.save(folder, _ELSEWHERE)
    else:
        write_files(student_files(trained, folder), _ELSEWHERE)
    opt = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, opt)
    rng = {f"generator.{rank}": g.cpu().contiguous() for rank, g in enumerate(generator_states)}
    state_json = {"step": state.step, "position": asdict(state.position), "samples": state.samples}
    write_files({str(folder / RUN_CONFIG): json.dumps(config, indent=1).encode(),
                 str(folder / "optimizer.pt"): opt.getvalue(),
                 str(folder / "rng.safetensors"): safetensors_bytes(rng),
                 str(folder / "state.json"): json.dumps(state_json).encode()}, _ELSEWHERE)
    return folder


def load_checkpoint(folder: Path, trained: PEAAdapter | FineTuned | UNet, optimizer, schedule,
                    generator: torch.Generator, rank: int = 0) -> TrainState:
    if isinstance(trained, FineTuned):
        trained.load(folder)
    elif not isinstance(trained, PEAAdapter):
        load_student_weights(trained, folder)
    else:
        config = trained.config
        trained.load_state_dict(load_adapter(folder, config.input_dim, config.context_dim, config.pooled_dim).state_dict())
    # our own file, read back with weights_only: tensors and plain containers, no arbitrary objects
    opt = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(opt["optimizer"])
    schedule.load_state_dict(opt["schedule"])
    states = load_file(folder / "rng.safetensors")
    if f"generator.{rank}" not in states:
        raise PeaError(f"checkpoint {folder} holds no noise state for rank {rank} (saved with {len(states)} workers)",
                       "resume with the same number of workers, or start a new run name")
    generator.set_state(states[f"generator.{rank}"])
    state = json.loads((folder / "state.json").read_text())
    return TrainState(step=state["step"], position=Position(**state["position"]), samples=state["samples"])
