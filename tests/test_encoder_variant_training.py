"""An adapter trained on one of the language's encoder variants (`train.encoder_variant`): the worker loads that
encoder, the adapter is as wide as it and records it, and inference, evaluation and serving load it again.
In-process on tiny-sdxl (its stand-ins: 32-wide tiny-xlmr-clip and tiny-mt5; its own tiny-byt5 is 64 wide)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pea.adapter import CONFIG, PEAAdapter
from pea.data.cache import FORMAT
from pea.data.records import CachedFeatures
from pea.errors import PeaError
from pea.features import LatentDistribution
from pea.inference import PEAPipeline, check_fits
from pea.languages import get_language
from pea.models.loading import load_pipeline
from pea.names import model_name, run_name
from pea.presets import get_preset
from pea.profiles import load_profile
from pea.run_config import build_run_config
from pea.storage import Storage
from pea.train.config import TrainConfig, TrainJob
from pea.train.run import adapter_config, train_adapter

KO = get_language("ko")
TINY = get_preset("tiny-sdxl")
VARIANTS = ("multilingual-clip", "mt5")
STEPS = 3


def _cfg(variant: str | None) -> TrainConfig:
    return TrainConfig(batch_size=4, lr=1e-2, encoder_variant=variant).for_preset(TINY)


def _job(variant: str | None, model_cache, cached: bool = False) -> TrainJob:
    """The fields of a job that a worker's models are loaded from (the data's and the run's are not read)."""
    cfg = _cfg(variant)
    return TrainJob.model_construct(lang="ko", preset=TINY.name, model_cache=str(model_cache), cached=cached,
                                    data_prefix=("features",), adapter=adapter_config(KO, TINY, cfg), train=cfg)


def _train(variant: str, model_cache, tmp_path):
    """A worker's models for the job (pea.train.loop._Models) and STEPS steps of its adapter, saved."""
    from pea.train.loop import _Models, micro_step, optimizer_step

    job = _job(variant, model_cache)
    models = _Models(job, torch.device("cpu"), Storage(str(tmp_path)))
    torch.manual_seed(0)
    batch = models.extractor(torch.rand(4, 3, 32, 32) * 2 - 1, ["a red circle", "a blue square", "", "a star"],
                             ["빨간 원", "파란 사각형", "한복", "별"], torch.tensor([0, 0, 1, 0]), keys=list("abcd"))
    adapter = PEAAdapter(job.adapter)
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=job.train.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    generator = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        assert micro_step(adapter, models, batch, job.train.kd_config(), job.train, generator, step,
                          sync=True) is not None
        optimizer_step(adapter, optimizer, schedule, job.train.max_grad_norm)
    assert all(not torch.equal(before[k], v) for k, v in adapter.state_dict().items())
    return SimpleNamespace(models=models, batch=batch, folder=adapter.save(tmp_path / "adapter"))


@pytest.fixture(scope="module", params=VARIANTS)
def trained(request, model_cache, tmp_path_factory):
    return request.param, _train(request.param, model_cache, tmp_path_factory.mktemp(request.param))


def test_the_adapter_is_as_wide_as_the_variant_and_records_it(trained):
    variant, run = trained
    spec = TINY.student_for(KO, variant)
    assert run.models.extractor.text.student.spec == spec
    assert run.batch.student_states.shape[-1] == spec.hidden_size == 32 != TINY.student_for(KO).hidden_size
    saved = json.loads((run.folder / CONFIG).read_text())
    assert (saved["input_dim"], saved["student_encoder"], saved["encoder_variant"]) == (32, spec.id, variant)


def test_inference_draws_with_the_variant_encoder(trained, model_cache):
    variant, run = trained
    check_fits(run.folder, KO, TINY)
    pipe = PEAPipeline.wrap(load_pipeline(TINY, model_cache), run.folder, KO, TINY, model_cache)
    assert pipe.conditioner.encoder.spec == TINY.student_for(KO, variant)
    image = pipe("빨간 원", generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_the_served_model_loads_the_variant_encoder(trained, model_cache):
    from pea.serving import PEAPyfunc

    variant, run = trained
    served = PEAPyfunc()
    served.load_context(SimpleNamespace(model_config={"lang": "ko", "preset": TINY.name, "model_cache": str(model_cache)},
                                        artifacts={"adapter": str(run.folder)}))
    assert served.conditioner.encoder.spec == TINY.student_for(KO, variant)
    out = served.predict(None, ["빨간 원"])
    assert np.asarray(out["prompt_embeds"][0]).shape[-1] == TINY.context_dim


def test_a_default_adapter_keeps_the_languages_encoder_and_its_file(model_cache, tmp_path):
    config = adapter_config(KO, TINY, _cfg(None))
    folder = PEAAdapter(config).save(tmp_path)
    assert "encoder_variant" not in json.loads((folder / CONFIG).read_text())  # what older pea versions read
    pipe = PEAPipeline.wrap(load_pipeline(TINY, model_cache), folder, KO, TINY, model_cache)
    assert pipe.conditioner.encoder.spec == TINY.student_for(KO) and config.input_dim == 64


def test_an_adapter_on_another_presets_variant_model_is_refused(tmp_path):
    """A real preset's mt5 adapter names the same variant as tiny-sdxl's, but another encoder."""
    config = adapter_config(KO, TINY, _cfg("mt5")).model_copy(update={"student_encoder": "google/mt5-xl"})
    PEAAdapter(config).save(tmp_path)
    with pytest.raises(PeaError, match="trained on encoder 'google/mt5-xl', the tiny-sdxl preset uses 'tiny-mt5'"):
        check_fits(tmp_path, KO, TINY)


def test_a_variant_job_encodes_its_captions_past_cached_text(model_cache, tmp_path):
    """Cached text embeddings are the language's own encoder's (64 wide): a variant's worker encodes itself."""
    from pea.train.loop import _Models

    Storage(str(tmp_path)).write_json({"format": FORMAT, "text_embeddings": True}, "features", "manifest.json")
    models = _Models(_job("mt5", model_cache, cached=True), torch.device("cpu"), Storage(str(tmp_path)))
    cached_text = {"teacher_context": torch.zeros(2, 77, 64), "teacher_pooled": torch.zeros(2, 32),
                   "student_states": torch.zeros(2, 96, 64), "student_mask": torch.ones(2, 96, dtype=torch.long)}
    raw = CachedFeatures(LatentDistribution(torch.zeros(2, 4, 4, 4), torch.ones(2, 4, 4, 4)), ["a", "b"],
                         ["빨간 원", "별"], torch.tensor([False, False]), torch.zeros(2, 6), ["a", "b"], cached_text)
    batch = models.batch(raw, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert models.text.student.spec.id == "tiny-mt5" and batch.student_states.shape[-1] == 32
    assert models.null.student_states.shape[-1] == 32


def test_the_variant_is_a_run_config_value_and_flag_checked_before_anything_runs(pea_cli):
    assert build_run_config(overrides={"train.encoder_variant": "mt5"}).train.encoder_variant == "mt5"
    with pytest.raises(PeaError) as err:
        build_run_config(overrides={"train.encoder_variant": "xlm"})
    assert err.value.problem == ("run config: train.encoder_variant 'xlm' is not valid "
                                 "(Input should be 'multilingual-clip' or 'mt5')")
    out = pea_cli("train", "--lang", "ko", "--preset", "tiny-sdxl", "--encoder-variant", "xlm")
    assert out.code != 0 and "train.encoder_variant 'xlm' is not valid" in out.err


def test_a_variant_the_preset_lacks_fails_before_a_job_starts(tmp_path):
    profile = load_profile("local", env={"PEA_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path)
    with pytest.raises(PeaError, match="preset 'toy' has no encoder variant 'mt5'") as err:
        train_adapter(profile, KO, get_preset("toy"), TrainConfig(encoder_variant="mt5"))
    assert "\n" not in err.value.problem
    assert not (tmp_path / "data").exists()  # no lock, no run folder: nothing started


def test_a_variant_is_named_apart_from_the_languages_own_encoder():
    assert model_name("ko", encoder_variant="mt5") == "pea-ko-mt5" != model_name("ko") == "pea-ko"
    assert model_name("ko", "lora", "multilingual-clip") == "pea-ko-lora-multilingual-clip"
    assert run_name("ko", "sdxl", encoder_variant="mt5") == "pea-ko-mt5-sdxl" != run_name("ko", "sdxl")
    assert "encoder_variant" not in TrainConfig().identity()  # runs started before the field still resume
    assert TrainConfig(encoder_variant="mt5").identity()["encoder_variant"] == "mt5"
    assert TrainConfig(encoder_variant="mt5").job_name("ko", "sdxl", "ab12") == "pea-ko-mt5-sdxl-ab12"


def test_a_variant_adapter_registers_and_competes_under_its_own_name(trained, tmp_path):
    """The training run's params name the registered model, so evaluation's champion and the gate's versions
    are the variant's own: a variant adapter never displaces the language encoder's champion."""
    from pea.evaluate.stage import _lineage
    from pea.registry import CHAMPION, apply_decision, list_versions, register, version_by_alias
    from pea.tracking import client

    variant, run = trained
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow = client(uri)
    run_id = mlflow.create_run(mlflow.create_experiment("pea-ko")).info.run_id
    mlflow.log_param(run_id, "train.method", "pea")
    mlflow.log_param(run_id, "train.encoder_variant", variant)
    lineage = _lineage(None, None, mlflow.get_run(run_id))  # no unet_from: nothing else is looked up
    assert lineage == ("pea", variant, None)
    registered = register(uri, "ko", run_id, run.folder, {"pea.lang": "ko"}, {"lang": "ko"}, *lineage)
    apply_decision(uri, model_name("ko", *lineage), registered.version, True, {})
    assert mlflow.get_model_version(f"pea-ko-{variant}", registered.version).tags["pea.plug_in"] == "true"
    assert str(version_by_alias(uri, "ko", CHAMPION, *lineage).version) == registered.version
    assert version_by_alias(uri, "ko", CHAMPION) is None and list_versions(uri, "ko") == []
