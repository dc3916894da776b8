"""The per-language job as it runs today on one machine: every stage, in order.

On the toy preset the data comes from the toy world itself (parallel samples with both captions, culture
samples native only); on real presets from what `pea harvest` fetched. The Prefect flow (flows/) takes this
over with the orchestration issue.
"""

from collections.abc import Callable

from pea.data.sources import SourceSpec
from pea.errors import PeaError
from pea.evaluate.config import EvalConfig, GateConfig
from pea.languages import Language
from pea.presets import get_preset
from pea.profiles import Profile, check_mlflow
from pea.stages import bucket_stage, cache_stage, harvest_stage, translate_stage
from pea.train.config import TrainConfig

TOY_SAMPLES = 4000
TOY_CULTURE_SHARE = 0.15


def toy_sources(profile: Profile, language: Language, samples: int = TOY_SAMPLES) -> list[SourceSpec]:
    from pea.toy.world import LANGS, write_folders

    if language.code not in LANGS:
        raise PeaError(f"the toy world has no {language.code!r} captions", f"use one of: {', '.join(LANGS)}")
    root = profile.data_dir / "toy-data" / language.code
    if not (root / ".complete").exists():
        write_folders(root / "parallel", root / "culture", language.code, samples, TOY_CULTURE_SHARE, seed=0)
        (root / ".complete").write_text("ok\n")
    return [SourceSpec(name="toy-parallel", kind="folder", uri=str(root / "parallel")),
            SourceSpec(name="toy-culture", kind="folder", uri=str(root / "culture"), culture=True)]


def run_language(language: Language, profile: Profile, echo: Callable[[str], None] = print,
                 train: TrainConfig | None = None, toy_samples: int = TOY_SAMPLES,
                 evaluation: EvalConfig = EvalConfig(), gate: GateConfig = GateConfig()) -> dict:
    from pea.evaluate.stage import evaluate_stage, register_stage
    from pea.train.run import train_adapter

    preset = get_preset(profile.preset)
    check_mlflow(profile.mlflow_tracking_uri)
    storage = profile.storage()
    echo(f"pea {language.code} ({language.name}) on profile {profile.name}: preset {preset.name}, storage {storage.root}")
    # built-locally presets (tiny, toy) train on toy-world data; real ones on what `pea harvest` fetched
    sources = toy_sources(profile, language, toy_samples) if preset.is_built_locally else []
    for source in sources:
        if not storage.exists(language.code, "raw", source.name, "manifest.json"):
            manifest = harvest_stage(profile, language, source)
            echo(f"  harvest {source.name}: {manifest['counts']['success']} samples")
    if not storage.glob(language.code, "raw", "*", "manifest.json"):
        raise PeaError(f"no harvested data for {language.code!r} under {storage.root}",
                       f"run `pea harvest --lang {language.code} ...` first, or use the toy preset")
    captions = translate_stage(profile, language)
    echo(f"  translate: {captions['counts']}")
    shards = bucket_stage(profile, language)
    echo(f"  bucket: {shards['samples']} samples in {len(shards['buckets'])} buckets, dropped {shards['dropped']}")
    features = cache_stage(profile, language)
    echo(f"  cache: {len(features['shards'])} feature shards")
    result = train_adapter(profile, language, train or TrainConfig(progress="log"))
    echo(f"  train: {result.steps} steps, adapter at {result.adapter_uri} (MLflow run {result.mlflow_run_id})")
    summary = evaluate_stage(profile, language, result.run_name, evaluation, echo)
    echo(f"  evaluate: report at {summary['report']}")
    registered = register_stage(profile, language, result.run_name, gate)
    verdict = "champion" if registered["promoted"] else "challenger"
    echo(f"  register: {registered['model']} version {registered['version']} is {verdict} ({registered['reason']})")
    return {"language": language.code, "preset": preset.name, "adapter": result.adapter_uri,
            "mlflow_run_id": result.mlflow_run_id, "report": summary["report"], "version": registered["version"],
            "promoted": registered["promoted"]}
