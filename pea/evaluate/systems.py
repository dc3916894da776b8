"""The systems an evaluation scores beside the candidate and the champion: the built-in baselines, drawn by
the base pipeline itself (`teacher_en`: the English prompt; `translate`: the native prompt machine-translated
to English), and external text-to-image systems from pea/resources/systems.yaml, each drawing from the native
prompt at its own resolution. An external system that cannot be scored here is skipped with the reason, for
the evaluation to report: weights not in the cache, prompts in a language it was not trained for, or a real
system next to a built-locally base model (or a stand-in next to a real one: scores of random-weight models
and real ones side by side compare nothing).
"""

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from pea.errors import PeaError
from pea.resources import load_registry

BASELINES = ("teacher_en", "translate")  # drawn by the base pipeline
ALWAYS = ("candidate", "champion")  # every evaluation's first rows (the champion when there is one)
Draw = Callable  # (texts: list[str], num_inference_steps=, guidance_scale=, generator=) -> output with .images


class ExternalSystem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    loader: Literal["alt_diffusion"]
    model_id: str | None = None  # hub id or local folder
    build: str | None = None  # a stand-in built under the model cache (pea/models/tiny_systems.py)
    languages: tuple[str, ...]

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model_id is None) == (self.build is None):
            raise ValueError("give exactly one of model_id and build")
        return self


@cache
def registry() -> dict[str, ExternalSystem]:
    return load_registry("systems.yaml", ExternalSystem, "name")


def system_names() -> tuple[str, ...]:
    """Every name EvalConfig.systems accepts."""
    return BASELINES + tuple(registry())


def load_external(names: tuple[str, ...], langs: set[str], preset, model_cache: Path,
                  device: str) -> tuple[dict[str, Draw], dict[str, str]]:
    """(draw function per loaded system, reason per skipped one) for the external systems among `names`,
    for prompts in `langs` next to base model `preset`."""
    loaded, skipped = {}, {}
    for name in (n for n in names if n not in BASELINES):
        system = registry()[name]
        folder, reason = _folder(system, langs, preset, model_cache)
        if reason is None:
            try:
                loaded[name] = LOADERS[system.loader](folder, device)
            except (OSError, PeaError) as e:  # a cached repo with files missing or not matching its classes
                reason = f"could not be loaded from {folder}: {e}"
        if reason is not None:
            skipped[name] = reason
    return loaded, skipped


def _folder(system: ExternalSystem, langs: set[str], preset, model_cache: Path) -> tuple[Path | None, str | None]:
    """(the system's local folder, None) or (None, why it cannot be scored here)."""
    from pea.models.tiny_systems import ensure_standin

    missing = sorted(langs - set(system.languages))
    if missing:
        return None, f"not trained for {', '.join(missing)} (it covers {', '.join(system.languages)})"
    if (system.build is not None) != preset.is_built_locally:
        kind = ("a built-locally stand-in", "real") if system.build else ("a real system", "built-locally")
        return None, f"{kind[0]} is not scored next to the {kind[1]} base model of preset {preset.name!r}"
    if system.build is not None:
        return ensure_standin(system.build, model_cache), None
    if Path(system.model_id).is_dir():
        return Path(system.model_id), None
    return _hub_snapshot(system.model_id)


def _hub_snapshot(repo_id: str) -> tuple[Path | None, str | None]:
    """The cached snapshot of `repo_id`, never a download: an evaluation fetches no multi-GB system."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True)), None
    except LocalEntryNotFoundError:
        return None, (f"weights of {repo_id} are not in the model cache ({constants.HF_HUB_CACHE}): "
                      f"download them first (`hf download {repo_id}`)")


def load_alt_diffusion(folder: Path, device: str) -> Draw:
    """AltDiffusion as diffusers' AltDiffusionPipeline, which diffusers 0.42 still ships (deprecated, in
    diffusers.pipelines.deprecated.alt_diffusion), built from its pieces loaded by hand: the repo's
    model_index.json names the text encoder's library `alt_diffusion`, which from_pretrained in 0.42 refuses
    to import, and transformers' CLIPFeatureExtractor, which transformers 5 no longer has. The text encoder
    is loaded strictly (pea.models.loading.load_weights_strictly); the repo's weights are `.bin` files. The
    safety checker and its feature extractor are left out, as scoring_pipeline does for SD1.5: an image it
    flags would be scored black."""
    import diffusers
    from diffusers.pipelines.deprecated.alt_diffusion import RobertaSeriesModelWithTransformation
    from transformers import XLMRobertaTokenizer

    from pea.models.loading import load_weights_strictly, place_frozen

    pieces = {"text_encoder": load_weights_strictly(RobertaSeriesModelWithTransformation, str(folder / "text_encoder")),
              "tokenizer": XLMRobertaTokenizer.from_pretrained(folder / "tokenizer"),
              "unet": diffusers.UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=False),
              "vae": diffusers.AutoencoderKL.from_pretrained(folder / "vae", use_safetensors=False),
              "scheduler": diffusers.PNDMScheduler.from_pretrained(folder / "scheduler")}
    pipe = diffusers.AltDiffusionPipeline(**pieces, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe = place_frozen(pipe, "sd15", device)  # SD 2.1's VAE runs in half, as SD1.5's does
    pipe.set_progress_bar_config(disable=True)
    return lambda texts, **kw: pipe(prompt=texts, **kw)


LOADERS: dict[str, Callable[[Path, str], Draw]] = {"alt_diffusion": load_alt_diffusion}
