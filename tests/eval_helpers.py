"""A finished training run without Ray: an adapter under the storage root and its MLflow run, as
pea.train.run leaves them, so that evaluation and registration can be tested on their own."""

import torch
from mlflow import MlflowClient
from mlflow.entities import Metric

from pea.adapter import AdapterConfig, PEAAdapter
from pea.languages import get_language
from pea.presets import get_preset
from pea.tracking import TRAIN_RUN_TAG, experiment_id


def fake_training_run(profile, preset_name: str, lang: str, run_name: str, seed: int, scratch) -> str:
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
    client.set_terminated(run.info.run_id)
    return run.info.run_id
