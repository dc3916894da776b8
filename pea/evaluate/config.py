"""Evaluation settings, typed (no heavy imports: presets and the CLI read these)."""

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pea.languages import ModelRef


class EvalModels(BaseModel):
    """The metric models; defaults are the ones the paper reports with. Built-locally names (tiny-*) are
    made under the model cache, as the tiny presets' other models are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    clipscore_native: ModelRef | None = None  # None: the language's own CLIP from languages.yaml
    clipscore_en: str = "ViT-bigG-14"  # an open_clip architecture, or a tiny-* build
    clipscore_en_pretrained: str = "laion2b_s39b_b160k"
    pickscore: str = "yuvalkirstain/PickScore_v1"
    pickscore_processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    image_reward: str = "THUDM/ImageReward"  # a hub repo or folder with ImageReward.pt + med_config.json
    image_reward_tokenizer: str = "bert-base-uncased"
    toy_judge: bool = False  # the toy world scores with its judge instead of all of the above


class EvalDefaults(BaseModel):
    """What a preset's evaluations use unless the run says otherwise: real base models sample 25 steps in
    batches a GPU holds at 1024 px; the toy world's 32 px teacher samples whole prompt sets in a batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(25, ge=1)
    batch_size: int = Field(8, ge=1)


class EvalConfig(BaseModel):
    """How images are made for scoring: fixed seeds, so every system sees the same noise per prompt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    images_per_prompt: int = Field(1, ge=1)
    seed: int = 0
    steps: int | None = Field(None, ge=1)  # None: the preset's (EvalDefaults), filled in by for_preset
    guidance: float = Field(5.0, ge=0)
    batch_size: int | None = Field(None, ge=1)  # None: the preset's
    max_prompts: int | None = Field(None, ge=1)  # per set; None: all of them
    report_prompts: int = Field(6, ge=1)  # prompts per set shown in the report
    # scored beside the candidate and the champion (always), in this order: the base model's own baselines and
    # external systems from pea/resources/systems.yaml (pea/evaluate/systems.py); one that cannot be scored is
    # reported as skipped with the reason
    systems: tuple[str, ...] = ("teacher_en", "translate", "altdiffusion-m18")

    @field_validator("systems")
    @classmethod
    def _known_systems(cls, systems: tuple[str, ...]) -> tuple[str, ...]:
        from pea.evaluate.systems import system_names

        unknown = [s for s in systems if s not in system_names()]
        if unknown or len(set(systems)) != len(systems):
            raise ValueError(f"systems must be distinct names from {', '.join(system_names())} (candidate and "
                             f"champion are always scored); got {', '.join(systems)}")
        return systems

    def for_preset(self, preset) -> "EvalConfig":
        """This config with every field left to the preset filled from it (what the evaluation runs)."""
        defaults = preset.eval.model_dump()
        return self.model_copy(update={k: v for k, v in defaults.items() if getattr(self, k) is None})


class GateConfig(BaseModel):
    """The champion gate: better on the primary metric, and no worse than `tolerance` on the guard."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tolerance: float = Field(0.05, ge=0)  # absolute drop allowed on the guard metric
    min_gain: float = Field(0.0, ge=0)  # the primary metric must rise by more than this
