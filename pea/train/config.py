"""What a training job needs, typed; the whole of it goes to MLflow as parameters and into every checkpoint."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pea.adapter import AdapterConfig
from pea.baselines import SD_LOSS, UNET_PARTS
from pea.compress.distill import CompressLosses
from pea.compress.recipes import registry as recipes
from pea.distill import ABLATIONS, KDConfig
from pea.languages import registry as languages
from pea.names import compress_model_name, compress_run_name, model_name, name_type, run_name


RUNTIME_FIELDS = {"run_name", "max_failures", "keep_checkpoints", "log_every", "checkpoint_every"}
# PEA, its ablations (pea.distill.ABLATIONS: the adapter alone trains), the baselines that fine-tune part of
# the UNet with the SD loss (pea.baselines.UNET_PARTS), and the distillation of a block-removed student UNet
# (pea.compress: the whole student trains, no adapter)
COMPRESS = "compress"
METHODS = (*ABLATIONS, *UNET_PARTS, COMPRESS)
# the encoder variants any language offers (pea.languages); whether the run's language offers one is checked when
# its training starts (pea.train.run.train_adapter)
ENCODER_VARIANTS = tuple(dict.fromkeys(name for lang in languages().values() for name in lang.encoder_variants))


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
    recipe: name_type("recipe name") | None = None  # method compress: the student (pea/resources/compress.yaml)
    compress: CompressLosses = CompressLosses()  # method compress: BK-SDM's loss weights and paired blocks
    # PEA and its ablations: distil against this compression run's student UNet (same language's storage, e.g.
    # pea-unet-sdxl-midless-toy) instead of the preset's UNet; None: the preset's
    unet_from: name_type("run name") | None = None
    # train on one of the language's other encoders (paper Table 1: multilingual-clip, mt5); None: its own
    encoder_variant: Literal[ENCODER_VARIANTS] | None = None
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

    @model_validator(mode="after")
    def _compress_names_its_recipe(self) -> "TrainConfig":
        """A recipe makes sense for method compress only, and compress needs one that exists."""
        if (self.method == COMPRESS) != (self.recipe is not None):
            raise ValueError("method compress and a recipe go together: give both or neither")
        if self.recipe is not None and self.recipe not in recipes():
            raise ValueError(f"no compression recipe {self.recipe!r}; known: {', '.join(recipes())}")
        if self.method == COMPRESS and self.kd is not None:
            raise ValueError("method compress trains with its own loss weights (`compress`), not `kd`")
        if self.unet_from is not None and self.method not in ABLATIONS:
            raise ValueError(f"unet_from (a student UNet to distil against) is for PEA and its ablations, "
                             f"not method {self.method!r}")
        return self

    def kd_config(self) -> KDConfig:
        if self.kd is not None:
            return self.kd
        return ABLATIONS.get(self.method, SD_LOSS)

    def job_name(self, lang: str, preset: str, suffix: str | None = None) -> str:
        """The training job's run name: the one given, or pea.names.run_name of the language, preset, method and
        encoder variant (so a baseline's or a variant's job never resumes the default adapter's)."""
        if self.method == COMPRESS:
            return self.run_name or compress_run_name(self.recipe, preset, suffix)
        name = run_name(lang, preset, suffix, method=self.method, encoder_variant=self.encoder_variant)
        return self.run_name or (f"{name}-on-{self.unet_from}" if self.unet_from else name)

    def model_name(self, lang: str) -> str:
        """The registered model a job of this config becomes a version of (pea.names)."""
        if self.method == COMPRESS:
            return compress_model_name(self.recipe)
        return model_name(lang, self.method, self.encoder_variant)

    def identity(self) -> dict:
        """What decides the trained weights: a resumed run must match it. Left out: the run name (the job's
        key) and how the job is run and watched (failures allowed, checkpoints kept, logging and checkpoint
        intervals), which a resubmission may change; the LoRA rank unless the method is lora and the encoder
        variant unless one is given and the compression fields unless the method is compress (so runs started
        before those fields existed still resume)."""
        exclude = RUNTIME_FIELDS | ({"lora_rank"} if self.method != "lora" else set())
        exclude |= {"recipe", "compress"} if self.method != COMPRESS else set()
        exclude |= {"unet_from"} if self.unet_from is None else set()
        exclude |= {"encoder_variant"} if self.encoder_variant is None else set()
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
    index: str  # the shard index under data_prefix (pea.data.index): each worker reads it, no list travels
    adapter: AdapterConfig
    train: TrainConfig
    switches: TrainSwitches = TrainSwitches()
    config: dict  # what the job was started with (pea.train.run); stored in every checkpoint
    mlflow_run_id: str  # rank 0 logs into it; the tracking URI comes with the worker function (loop.WorkerLoop)
