"""Measure the method in the toy world with the pipeline's own stages: what is measured is what runs.

Per language: the toy data (seen scenes only) through harvest, translate, bucket and cache; the adapter
through `pea.train.run.train_adapter` (Ray Train, the `toy` preset's training defaults: what `pea train`
runs); `evaluate_stage` (the judge on held-out and seen prompts, with the teacher and the translate baseline
beside the candidate); and the same evaluation of an untrained adapter. The multilingual adapter can also be
asked in one language (`asked_in`): the same evaluation on that language's prompts. The benchmark
(benchmarks/toy_quality.py) and tests/test_toy_quality.py both call `measure`.
"""

import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pea.languages import Language, get_language
from pea.presets import get_preset
from pea.profiles import Profile
from pea.run_config import RunConfig

HEADS = ("shape", "color", "background")


class ToyScores(BaseModel):
    """Judge scores (mean probability of the asked values; chance pea.toy.judge.CHANCE on general prompts)."""

    model_config = ConfigDict(frozen=True)

    teacher_heldout: float  # the teacher, English held-out prompts: the reference
    heldout: float  # the candidate on held-out general prompts: the headline
    seen: float  # the candidate on seen general prompts (trained on)
    culture: float  # the candidate on held-out culture prompts (the word's shape and colour)
    culture_translate: float  # dictionary English of the same culture prompts through the teacher
    untrained: float | None  # an untrained adapter on held-out general prompts
    heads: dict[str, float]  # the candidate's per-head accuracy on held-out general prompts
    minutes: float  # data stages, training and evaluation


def prepare(profile: Profile, language: Language, config: RunConfig) -> None:
    """The data stages, as the flow runs them (each finds its output if it is there already)."""
    from pea.stages import bucket_stage, cache_stage, default_sources, ensure_harvested, translate_stage

    preset = get_preset(config.preset)
    for source in default_sources(profile, language, preset, config.data.toy_samples):
        ensure_harvested(profile, language, source)
    translate_stage(profile, language, preset)
    bucket_stage(profile, language, preset)
    cache_stage(profile, language, preset, config.data.cache_batch)


def judged(profile: Profile, language: Language, config: RunConfig, folder: Path, asked_in: Language,
           sets: tuple[str, ...] | None = None, unet: Path | None = None) -> dict[str, dict[str, float]]:
    """Every system's scores (`pea.evaluate.run.evaluate`: the candidate, then config.eval's systems) for the
    adapter at `folder`, read by `language`'s student, on `asked_in`'s toy prompts (`sets` of them, default
    all), drawn and scored as `evaluate_stage` draws and scores them. With `unet` (a compressed student's
    diffusers folder, pea.compress) every system draws with that UNet in place of the teacher's: the
    "teacher_en" row is then the student's own English score and "candidate" the adapter driving the student."""
    from pea.evaluate.run import evaluate
    from pea.evaluate.stage import scoring_pipeline
    from pea.evaluate.suites import Suite, build_suite
    from pea.inference import PEAPipeline

    preset = get_preset(config.preset)
    cfg = config.eval.for_preset(preset)
    pipe = scoring_pipeline(preset, profile.model_cache, "cpu")
    if unet is not None:
        from diffusers import UNet2DConditionModel

        pipe.unet = UNet2DConditionModel.from_pretrained(unet).to(pipe.device, pipe.unet.dtype).eval()
    full = build_suite(preset, asked_in, profile.model_cache).limit(cfg.max_prompts)
    suite = full if sets is None else Suite({k: full.sets[k] for k in sets}, full.scorers, full.translate,
                                            full.primary, full.guard)
    candidate = PEAPipeline.wrap(pipe, folder, language, preset, profile.model_cache)
    with tempfile.TemporaryDirectory() as tmp:
        return evaluate(pipe, candidate, None, suite, cfg, Path(tmp) / "images").metrics


def untrained_heldout(profile: Profile, language: Language, config: RunConfig,
                      asked_in: Language | None = None) -> float:
    """The judge's held-out MG score of a freshly initialised adapter of the trained one's shape (asked in
    `asked_in`, default its own language)."""
    import torch

    from pea.adapter import PEAAdapter
    from pea.train.run import adapter_config

    preset = get_preset(config.preset)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(config.train.seed)
        folder = PEAAdapter(adapter_config(language, preset, config.train)).save(Path(tmp) / "adapter")
        metrics = judged(profile, language, config, folder, asked_in or language, sets=("mg",))
    return metrics["candidate"]["mg_judge"]


def asked_language(lang: str, asked_in: str | None) -> Language:
    """The language `lang`'s adapter is asked in: its own, or for the multilingual adapter (one student for
    every language) any one toy language, so that its scores sit beside that language's own adapter's."""
    from pea.toy.world import LANGS, MULTILINGUAL

    if asked_in is None or asked_in == lang:
        return get_language(lang)
    if lang != MULTILINGUAL or asked_in not in LANGS:
        raise ValueError(f"only the {MULTILINGUAL} adapter is asked in another language (one of "
                         f"{', '.join(LANGS)}); got {lang!r} asked in {asked_in!r}")
    return get_language(asked_in)


def measure(profile: Profile, lang: str, config: RunConfig = RunConfig(), untrained: bool = True,
            asked_in: str | None = None) -> ToyScores:
    """Train `lang`'s adapter with `config` (its method, steps, ...) on the toy preset and score it: by
    `evaluate_stage` on its own language's prompts or, with `asked_in` (the multilingual adapter only), by the
    same evaluation on that language's prompts (held-out, seen and its culture scenes), so that its scores
    compare with that language's own adapter's (the teacher and translate rows are then the same numbers)."""
    from pea.evaluate.stage import _adapter_copy, evaluate_stage
    from pea.train.config import TrainSwitches
    from pea.train.run import train_adapter

    if config.preset != "toy":
        raise ValueError(f"the toy world measures the toy preset, not {config.preset!r}")
    language, preset = get_language(lang), get_preset(config.preset)
    asked = asked_language(lang, asked_in)
    start = time.perf_counter()
    prepare(profile, language, config)
    train = config.train.model_copy(update={"run_name": config.train.run_name or f"toy-{lang}-{config.train.method}"})
    result = train_adapter(profile, language, preset, train, TrainSwitches(progress="log"))
    if asked.code == language.code:
        metrics = evaluate_stage(profile, language, preset, result.run_name, config.eval).metrics
    else:
        with tempfile.TemporaryDirectory() as tmp:
            folder = _adapter_copy(profile, language, result.run_name, Path(tmp) / "adapter")
            metrics = judged(profile, language, config, folder, asked)
    candidate, teacher, translate = (metrics[s] for s in ("candidate", "teacher_en", "translate"))
    return ToyScores(teacher_heldout=teacher["mg_judge"], heldout=candidate["mg_judge"],
                     seen=candidate["mg_seen_judge"], culture=candidate["mc_judge_word"],
                     culture_translate=translate["mc_judge_word"],
                     untrained=untrained_heldout(profile, language, config, asked) if untrained else None,
                     heads={head: candidate[f"mg_{head}"] for head in HEADS},
                     minutes=(time.perf_counter() - start) / 60)
