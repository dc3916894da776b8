"""What a training job needs, typed; the whole of it goes to MLflow as parameters and into every checkpoint."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pea.adapter import AdapterConfig
from pea.baselines import SD_LOSS, UNET_PARTS
from pea.distill import ABLATIONS, KDConfig
from pea.names import name_type


RUNTIME_FIELDS = {"run_name", "max_failures", "keep_checkpoints", "log_every", "checkpoint_every"}
# PEA, its ablations (pea.distill.ABLATIONS: the adapter alone trains) and the baselines that fine-tune part of
# the UNet with the SD loss (pea.baselines.UNET_PARTS)
METHODS = (*ABLATIONS, *UNET_PARTS)


class TrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(200, gt=0)  # optimizer steps
    batch_size: int = Field(16, gt=0)  # per worker, per micro-batch
    grad_accum: int = Field(1, ge=1)
    # None: the preset's (pea.presets.TrainDefaults), filled in by for_preset before a job starts
    lr: float | None = Field(None, gt=0)
    warmup_steps: int | None = Field(None, ge=0)  # linear warm-up, then cosine decay to 0
    weight_decay: float | None = Field(None, ge=0)
    adapter_hidden: tuple[int, ...] | None = None
    max_grad_norm: float = Field(1.0, gt=0)
    method: Literal[METHODS] = "pea"  # one of METHODS (a Literal: schemas list them)
    kd: KDConfig | None = None  # overrides `method`'s loss when given
    lora_rank: int = Field(4, gt=0, le=1024)  # method lora: LoRA rank r (alpha = r, as diffusers' SDXL LoRA script)
    seed: int = 0
    shuffle_buffer: int = Field(256, ge=1)
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(50, gt=0)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)
    on_nonfinite: Literal["raise", "skip"] = "raise"
    gradient_checkpointing: bool | None = None  # None: the preset's
    run_name: name_type("run name") | None = None  # Ray Train run name; the same name resumes that run

    def for_preset(self, preset) -> "TrainConfig":
        """This config with every field left to the preset filled from it (what the job logs and runs)."""
        defaults = {"lr": preset.train.lr, "warmup_steps": preset.train.warmup_steps,
                    "weight_decay": preset.train.weight_decay, "adapter_hidden": preset.adapter_hidden,
                    "gradient_checkpointing": preset.train.gradient_checkpointing}
        return self.model_copy(update={k: v for k, v in defaults.items() if getattr(self, k) is None})

    @model_validator(mode="after")
    def _baselines_have_no_teacher(self) -> "TrainConfig":
        """A baseline's step (pea.baselines.sd_step) computes the SD loss only: KD weights would be ignored."""
        kd = self.kd
        if self.method in UNET_PARTS and kd is not None and (kd.needs_teacher or kd.text_kd > 0):
            raise ValueError(f"method {self.method!r} trains with the SD loss alone: give kd without KD terms")
        return self

    def kd_config(self) -> KDConfig:
        if self.kd is not None:
            return self.kd
        return ABLATIONS.get(self.method, SD_LOSS)

    def identity(self) -> dict:
        """What decides the trained weights: a resumed run must match it. Left out: the run name (the job's
        key) and how the job is run and watched (failures allowed, checkpoints kept, logging and checkpoint
        intervals), which a resubmission may change; and the LoRA rank unless the method is lora (so runs
        started before the field existed still resume)."""
        exclude = RUNTIME_FIELDS | ({"lora_rank"} if self.method != "lora" else set())
        return self.model_dump(mode="json", exclude=exclude)


class TrainSwitches(BaseModel):
    """How a job shows progress, and test hooks: never logged, never part of a cache key or a config check."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    progress: Literal["bar", "log"] = "bar"  # a bar on a terminal; samples/s and ETA lines at scale
    fault_at_step: int | None = None  # chaos drill: the first attempt of rank 0 dies at this step


class TrainJob(BaseModel):
    """Everything a worker needs, as plain data (it travels to Ray workers)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lang: str
    run_name: str
    preset: str
    model_cache: str
    storage_root: str
    s3_endpoint_url: str | None
    data_prefix: tuple[str, ...]  # where the shards are, under the storage root
    cached: bool  # feature shards (True) or image shards run through the encoders (False)
    shards: list[dict]
    adapter: AdapterConfig
    train: TrainConfig
    switches: TrainSwitches = TrainSwitches()
    config: dict  # what the job was started with (pea.train.run); stored in every checkpoint
    mlflow_run_id: str  # rank 0 logs into it; the tracking URI comes with the worker function (loop.WorkerLoop)
