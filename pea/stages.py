"""The data stages as a user or a flow runs them: a profile, a language, typed options.

Each function resolves models and paths from the profile and calls one pea.data function; the CLI and the
Prefect tasks both call these, so the two never drift apart. Each takes its stage's lock first (pea.locks), so
two runs on one language never do a stage's work twice at once. On built-locally presets (tiny, toy) the data
comes from the toy world itself (parallel samples with both captions, culture samples native only).
"""


import functools
from dataclasses import dataclass
from pathlib import Path

from pea.cluster import connect
from pea.data.buckets import BucketConfig
from pea.data.harvest import HarvestConfig, harvest
from pea.data.parallel import RayData
from pea.data.sources import SourceSpec
from pea.data.translate import TranslateConfig
from pea.errors import PeaError
from pea.languages import Language
from pea.layout import raw_dir
from pea.locks import stage_lock
from pea.presets import Preset
from pea.profiles import Profile
from pea.progress import Progress, quiet

TOY_CULTURE_SHARE = 0.15


def bucket_config(language: Language, preset: Preset, **overrides) -> BucketConfig:
    """Tiny presets bucket around their own resolution; real ones around the language's default side."""
    side = preset.resolution if preset.is_built_locally else language.buckets[preset.family]
    return BucketConfig(**{"side": side, "step": preset.bucket_step, **overrides})


def toy_sources(profile: Profile, language: Language, samples: int) -> list[SourceSpec]:
    """The toy world's samples for `language`, rendered once as harvestable folders."""
    from pea.toy.world import TOY_LANGS, write_folders

    if language.code not in TOY_LANGS:
        raise PeaError(f"the toy world has no {language.code!r} captions", f"use one of: {', '.join(TOY_LANGS)}")
    root = profile.data_dir / "toy-data" / f"{language.code}-{samples}"  # another count: other folders, harvested anew
    if not (root / ".complete").exists():
        write_folders(root / "parallel", root / "culture", language.code, samples, TOY_CULTURE_SHARE, seed=0)
        (root / ".complete").write_text("ok\n")
    return [SourceSpec(name="toy-parallel", kind="folder", uri=str(root / "parallel")),
            SourceSpec(name="toy-culture", kind="folder", uri=str(root / "culture"), culture=True)]


def default_sources(profile: Profile, language: Language, preset: Preset, toy_samples: int) -> list[SourceSpec]:
    """Toy data on built-locally presets; none on real ones (harvest with `pea harvest` or the flow's sources)."""
    return toy_sources(profile, language, toy_samples) if preset.is_built_locally else []


def harvested_sources(profile: Profile, language: Language) -> list[str]:
    """Names of the sources already harvested for `language` (each has a manifest)."""
    found = profile.storage().glob(*raw_dir(language.code), "*", "manifest.json")
    if not found:
        raise PeaError(f"no harvested data for {language.code!r} under {profile.storage().root}",
                       f"run `pea harvest --lang {language.code} ...` first, give the flow `sources`, or use the toy preset")
    return [path.split("/")[-2] for path in found]


def _harvest_lock(storage, language: Language, source: SourceSpec):
    """Harvests of different sources write different folders: each source has its own lock."""
    return stage_lock(storage, language.code, f"harvest-{source.name}")


def harvest_stage(profile: Profile, language: Language, source: SourceSpec, cfg: HarvestConfig = HarvestConfig()) -> dict:
    storage = profile.storage()
    with _harvest_lock(storage, language, source):
        return harvest(storage, language.code, source, cfg, connect=functools.partial(connect, profile))


def ensure_harvested(profile: Profile, language: Language, source: SourceSpec) -> dict:
    """A source's manifest: the one already there if it harvested this very source (kind, uri, ...), else a fresh
    harvest's. It is looked for under the harvest's lock, so a run that waited for another run's harvest of the
    source finds that harvest instead of redoing it."""
    storage = profile.storage()
    with _harvest_lock(storage, language, source):
        if storage.exists(*raw_dir(language.code), source.name, "manifest.json"):
            found = storage.read_json(*raw_dir(language.code), source.name, "manifest.json")
            if found["source"] == source.model_dump(mode="json"):
                return found
        return harvest(storage, language.code, source)


def translate_stage(profile: Profile, language: Language, preset: Preset, cfg: TranslateConfig = TranslateConfig(),
                    progress: Progress = quiet) -> dict:
    """Caption tables on Ray Data's actors: one a GPU where the profile has GPUs (the model loads at the first
    caption the translation cache lacks); the images are never read."""
    from pea.data.translate import translate

    model_id = preset.translation_for(language)
    storage = profile.storage()
    gpus = 1 if profile.ray.use_gpu else 0
    with stage_lock(storage, language.code, "translate", progress=progress):
        return translate(storage, language.code, language.translation.code, model_id,
                         LoadTranslator(model_id, profile.model_cache, cfg), progress, data_workers(profile, gpus))


@dataclass(frozen=True)
class LoadTranslator:
    """Loads the translation model where it is called (a Ray Data actor); a tiny one is built first."""

    model_id: str
    model_cache: Path
    cfg: TranslateConfig

    def __call__(self):
        from pea.data.translate import Translator
        from pea.models.tiny import ensure_built, tiny_names

        tiny = self.model_id in tiny_names()
        return Translator(str(ensure_built(self.model_id, self.model_cache)) if tiny else self.model_id, self.cfg)


def bucket_stage(profile: Profile, language: Language, preset: Preset, cfg: BucketConfig | None = None,
                 progress: Progress = quiet) -> dict:
    """Decode, crop and re-encode on the profile's Ray: one CPU actor per data worker."""
    from pea.data.shards import bucket

    cfg = cfg or bucket_config(language, preset)
    storage = profile.storage()
    with stage_lock(storage, language.code, "bucket", progress=progress):
        return bucket(storage, language.code, cfg, progress, mapper=data_workers(profile))


def _build_here(profile: Profile, preset: Preset, language: Language | None = None) -> None:
    """Build the models pea builds itself (tiny ones, the toy world; the language's student encoder too when
    `language` is given) in this process, before Ray's actors load them: an actor runs niced, with one thread
    (tests/test_toy_quality.py, which builds a fresh world: 691 s with the world built in the cache stage's
    actor, 549 s with it built here, on 2 cores). Real models are left to their actors."""
    from pea.models.loading import encoder_source, pipeline_source

    pipeline_source(preset, profile.model_cache)
    if language is not None:
        encoder_source(preset.student_for(language), profile.model_cache)


def data_workers(profile: Profile, gpus: float = 0) -> RayData:
    """Ray Data's actor pool on the profile's Ray: `data_workers` CPU actors, or one actor per training GPU."""
    workers = profile.ray.num_workers if gpus else profile.ray.data_workers
    return RayData(functools.partial(connect, profile), workers=workers, gpus=gpus)


def cache_stage(profile: Profile, language: Language, preset: Preset, batch_size: int, text: bool = False,
                progress: Progress = quiet) -> dict:
    """The VAE (and, with `text`, the text encoders) on Ray Data's actors: one a GPU where the profile has
    GPUs, in half precision; on CPUs in fp32."""
    import torch

    from pea.data.cache import bucketed, cache_features

    storage = profile.storage()
    bucketed(storage, language.code)  # nothing to cache: said before any model loads
    _build_here(profile, preset, language if text else None)
    gpus = 1 if profile.ray.use_gpu else 0
    dtype = torch.float16 if gpus else torch.float32
    load = FrozenEncoders(profile.model_cache, language, preset, text, batch_size)
    # taken before the models load: a run that waits holds no GPU memory
    with stage_lock(storage, language.code, f"cache-{preset.name}", progress=progress):
        return cache_features(storage, language.code, preset.name, load, text, dtype, progress,
                              mapper=data_workers(profile, gpus))


@dataclass(frozen=True)
class FrozenEncoders:
    """Loads the cache stage's models where it is called (a Ray Data actor): the base model's VAE, and its text
    encoders with the language's student encoder when `text` (frozen, in the teacher's dtype); never the UNet.
    On a GPU the models run in half precision (the VAE as precision.vae_dtype says) and a batch is at most
    what fits at the language's bucket side; on a CPU everything stays fp32 at `batch_size`."""

    model_cache: Path
    language: Language
    preset: Preset
    text: bool
    batch_size: int

    def __call__(self):
        import torch

        from pea.data.cache import Encoders
        from pea.features import TextFeatures
        from pea.models.encoders import load_text_encoder
        from pea.models.loading import load_frozen_pipeline
        from pea.models.precision import cache_batch_size, default_device

        device = torch.device(default_device())
        skipped = {"unet": None} | ({} if self.text else {"text_encoder": None} | (
            {"text_encoder_2": None} if self.preset.family == "sdxl" else {}))
        pipe = load_frozen_pipeline(self.preset, self.model_cache, device, **skipped)
        batch = self.batch_size
        if device.type == "cuda":
            memory = torch.cuda.get_device_properties(device).total_memory
            batch = min(batch, cache_batch_size(bucket_config(self.language, self.preset).side, pipe.vae.dtype, memory))
        if not self.text:
            return Encoders(pipe.vae, batch_size=batch)
        student = load_text_encoder(self.preset.student_for(self.language), self.model_cache).to(device)
        student.model.to(dtype=pipe.text_encoder.dtype)  # frozen like the teacher's encoders, in their dtype
        return Encoders(pipe.vae, TextFeatures(pipe, student), batch)
