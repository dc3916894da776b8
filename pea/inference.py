"""Native-language prompts into any diffusers SD/SDXL pipeline.

The student encoder and the adapter turn the prompt into `prompt_embeds` (+ `pooled_prompt_embeds` on SDXL)
and the wrapped pipeline does everything else, so schedulers, LoRAs, ControlNets, inpainting, LCM and turbo
models keep working: wrap whichever pipeline you built.

A fine-tuning baseline's folder (pea.baselines: `wkwv`, `lora`) also holds UNet weights: `wrap` then draws with
a copy of the pipeline whose UNet carries them, and the pipeline it was given stays as it was.
"""

from pathlib import Path

from pea.adapter import AdapterConfig, load_adapter, read_config
from pea.baselines import candidate_pipeline
from pea.conditioning import StudentConditioner, check_prompts, is_sdxl, null_is_zeros
from pea.errors import PeaError
from pea.languages import EncoderSpec, Language
from pea.models.encoders import load_text_encoder
from pea.models.loading import load_pipeline
from pea.presets import Preset


class PEAPipeline:
    def __init__(self, pipe, conditioner):
        self.pipe = pipe
        self.conditioner = conditioner

    def to(self, device) -> "PEAPipeline":
        self.pipe.to(device)
        self.conditioner.encoder.to(device)
        self.conditioner.adapter.to(device)
        return self

    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None, **kwargs):
        """Everything but the prompts goes to the wrapped pipeline (image=, mask_image=, generator=, ...)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        check_prompts(prompts)
        cond = self.conditioner(prompts)
        if negative_prompt:
            negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
            neg = self.conditioner(negatives)
        else:
            neg = self.conditioner.null(len(prompts))
        kwargs |= dict(prompt_embeds=cond.context, negative_prompt_embeds=neg.context.contiguous())
        if is_sdxl(self.pipe):
            kwargs |= dict(pooled_prompt_embeds=cond.pooled, negative_pooled_prompt_embeds=neg.pooled.contiguous())
        return self.pipe(**kwargs)

    @classmethod
    def wrap(cls, pipe, adapter_dir: Path, language: Language, preset: Preset, model_cache: Path) -> "PEAPipeline":
        """Attach the adapter at `adapter_dir` and the student encoder it was trained on to an existing pipeline;
        for a baseline, to a copy of it with the baseline's UNet (pea.baselines.candidate_pipeline), so that `pipe`
        can go on serving other systems unchanged."""
        spec = student_spec(adapter_dir, language, preset)
        context = pipe.unet.config.cross_attention_dim
        pooled = pipe.text_encoder_2.config.projection_dim if is_sdxl(pipe) else None
        adapter = load_adapter(adapter_dir, spec.hidden_size, context, pooled, language.code)
        _check_encoder(adapter.config, spec, preset)
        encoder = load_text_encoder(spec, model_cache).to(pipe.device)
        adapter = adapter.to(pipe.device, pipe.unet.dtype).eval().requires_grad_(False)
        pipe = candidate_pipeline(pipe, adapter_dir)
        return cls(pipe, StudentConditioner(encoder, adapter, zero_null=null_is_zeros(pipe)))

    @classmethod
    def from_preset(cls, adapter_dir: Path, language: Language, preset: Preset, model_cache: Path, **load_kwargs):
        check_fits(adapter_dir, language, preset)
        return cls.wrap(load_pipeline(preset, model_cache, **load_kwargs), adapter_dir, language, preset, model_cache)


def check_fits(adapter_dir: Path, language: Language, preset: Preset) -> None:
    """Refuse a broken adapter, or one that does not fit `preset`, from the adapter (a few MB) and the preset's
    widths alone, before any model is loaded: a real base model takes ~30 s to load, only for `wrap` to refuse
    the adapter then."""
    spec = student_spec(adapter_dir, language, preset)
    adapter = load_adapter(adapter_dir, spec.hidden_size, preset.context_dim, preset.pooled_dim, language.code)
    _check_encoder(adapter.config, spec, preset)


def student_spec(adapter_dir: Path, language: Language, preset: Preset) -> EncoderSpec:
    """The student encoder the adapter was trained on, on `preset`: the language's own, or the encoder variant its
    adapter.json names (pea.train.config.TrainConfig.encoder_variant), which needs another model loaded."""
    return preset.student_for(language, read_config(adapter_dir).encoder_variant)


def _check_encoder(config: AdapterConfig, spec: EncoderSpec, preset: Preset) -> None:
    """The variant's name picks the encoder; its id, recorded too, must be the preset's (a real preset's adapter
    on a tiny preset names the same variant but another model)."""
    if config.student_encoder and config.student_encoder != spec.id:
        raise PeaError(
            f"adapter was trained on encoder {config.student_encoder!r}, the {preset.name} preset uses {spec.id!r}",
            "use the preset the adapter was trained with",
        )
