"""A finished training run without Ray: an adapter under the storage root and its MLflow run, as
pea.train.run leaves them, so that evaluation and registration can be tested on their own."""

from pathlib import Path

import torch
from mlflow import MlflowClient
from mlflow.entities import Metric

from pea.adapter import AdapterConfig, PEAAdapter
from pea.languages import get_language
from pea.presets import get_preset
from pea.tracking import TRAIN_RUN_TAG, experiment_id


def fake_training_run(profile, preset_name: str, lang: str, run_name: str, seed: int, scratch,
                      params: dict[str, str] | None = None) -> str:
    language, preset = get_language(lang), get_preset(preset_name)
    spec = preset.student_for(language)
    torch.manual_seed(seed)
    adapter = PEAAdapter(AdapterConfig(input_dim=spec.hidden_size, context_dim=preset.context_dim,
                                       pooled_dim=preset.pooled_dim, hidden_dims=(32,), language=lang,
                                       student_encoder=spec.id, base_model=preset.name))
    folder = adapter.save(scratch / run_name)
    storage = profile.storage()
    for name in ("adapter.json", "adapter.safetensors"):
        storage.write_bytes((folder / name).read_bytes(), lang, "adapters", run_name, name)
    profile.data_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(profile.mlflow_tracking_uri)
    run = client.create_run(experiment_id(profile.mlflow_tracking_uri, profile.mlflow_artifact_root, lang),
                            run_name=run_name, tags={TRAIN_RUN_TAG: run_name, "pea.data_digest": f"digest-{seed}",
                                                     "pea.code_revision": "rev0", "pea.student_encoder": spec.id})
    client.log_batch(run.info.run_id, metrics=[Metric(k, v / (s + 1), 0, s) for s in range(0, 50, 10)
                                               for k, v in (("loss", 1.0), ("output_kd", 0.6), ("lr", 1e-3))])
    for key, value in (params or {}).items():  # as pea.train.run logs the job's identity (train.method, ...)
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def fake_compression_run(profile, preset_name: str, lang: str, run_name: str, recipe: str, noise: float,
                         scratch) -> str:
    """A finished compression run without Ray: `recipe`'s student of the preset's UNet (the teacher's kept blocks,
    every weight moved by `noise` times a seeded normal draw, so that two runs differ), its MLflow run made and
    its output saved by the functions pea.train.run uses for a real job."""
    from diffusers import UNet2DConditionModel

    from pea.compress.recipes import get_recipe
    from pea.compress.student import make_student, student_files
    from pea.models.loading import pipeline_source
    from pea.train.config import TrainConfig
    from pea.train.run import flatten, mlflow_run, run_tags, save_output

    language, preset = get_language(lang), get_preset(preset_name)
    teacher = UNet2DConditionModel.from_pretrained(pipeline_source(preset, profile.model_cache), subfolder="unet")
    student = make_student(teacher, get_recipe(recipe))
    torch.manual_seed(int(noise * 1000))
    with torch.no_grad():
        for weight in student.parameters():
            weight.add_(noise * torch.randn_like(weight))
    for path, data in student_files(student, scratch / run_name).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    cfg = TrainConfig(method="compress", recipe=recipe, run_name=run_name)
    profile.data_dir.mkdir(parents=True, exist_ok=True)
    run_id = mlflow_run(profile, language, run_name, params=flatten("", {"train": cfg.identity()}),
                        tags=run_tags(language, preset, cfg, f"digest-{recipe}"))
    save_output(profile, language, run_name, run_id, scratch / run_name)
    MlflowClient(profile.mlflow_tracking_uri).set_terminated(run_id)
    return run_id
