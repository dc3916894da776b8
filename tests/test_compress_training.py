"""A compression job (TrainConfig method `compress`) in the training engine's own pieces, without Ray: its
config and names, the worker's student and step (pea.train.loop with pea.compress.trainable), and its
checkpoint, which holds the student as a diffusers UNet folder. The Ray Train run is in tests/test_train.py."""

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from pea.compress.student import STUDENT_FILES
from pea.languages import get_language
from pea.presets import get_preset
from pea.profiles import load_profile
from pea.errors import PeaError
from pea.storage import Storage
from pea.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from pea.train.config import TrainConfig, TrainJob
from pea.train.run import adapter_config, train_adapter

KO = get_language("ko")
TINY = get_preset("tiny-sdxl")


def test_compress_and_a_recipe_go_together_and_the_recipe_must_exist():
    assert TrainConfig(method="compress", recipe="sdxl-midless").recipe == "sdxl-midless"
    for bad in ({"method": "compress"}, {"recipe": "sdxl-midless"}, {"method": "compress", "recipe": "nope"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="own loss weights"):
        TrainConfig(method="compress", recipe="sdxl-midless", kd={"output_kd": 1.0})


def test_a_compression_job_is_named_by_recipe_and_preset_and_its_identity_holds_the_recipe():
    cfg = TrainConfig(method="compress", recipe="sdxl-midless")
    assert cfg.job_name("ko", "toy") == "pea-unet-sdxl-midless-toy"
    assert cfg.job_name("ja", "toy", "abc") == "pea-unet-sdxl-midless-toy-abc"  # not the data's language
    assert cfg.identity()["recipe"] == "sdxl-midless" and cfg.identity()["compress"]["feature_kd"] == 1.0
    assert not {"recipe", "compress"} & set(TrainConfig().identity())  # adapter runs resume as before


def test_a_recipe_for_another_family_fails_before_a_job_starts(tmp_path):
    profile = load_profile("local", env={"PEA_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path)
    with pytest.raises(PeaError, match="'bk-sdm-midless' is for sd15 UNets.*use one of: sdxl-small"):
        train_adapter(profile, KO, TINY, TrainConfig(method="compress", recipe="bk-sdm-midless"))


def _job(model_cache) -> TrainJob:
    cfg = TrainConfig(method="compress", recipe="sdxl-midless", batch_size=4, lr=1e-3, warmup_steps=0).for_preset(TINY)
    return TrainJob.model_construct(lang="ko", preset=TINY.name, model_cache=str(model_cache), cached=False,
                                    data_prefix=("shards",), adapter=adapter_config(KO, TINY, cfg), train=cfg)


@pytest.fixture(scope="module")
def worker(model_cache, tmp_path_factory):
    """A worker's models and trainable module for a compression job, and one batch of four images."""
    from pea.train.loop import _Models, training_objects

    job = _job(model_cache)
    models = _Models(job, torch.device("cpu"), Storage(str(tmp_path_factory.mktemp("storage"))))
    trained, optimizer, schedule, generator = training_objects(job, models, "cpu", 0)
    torch.manual_seed(0)
    batch = models.extractor(torch.rand(4, 3, 32, 32) * 2 - 1, ["a red circle", "a blue square", "", "a star"],
                             ["빨간 원", "파란 사각형", "한복", "별"], torch.tensor([0, 0, 1, 0]), keys=list("abcd"))
    return job, models, trained, optimizer, schedule, generator, batch


def test_the_student_trains_and_the_teacher_stays_frozen(worker):
    from pea.train.loop import micro_step, optimizer_step

    job, models, student, optimizer, schedule, generator, batch = worker
    teacher = models.compression.teacher
    assert student.mid_block is None and teacher.mid_block is not None  # sdxl-midless
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    result = micro_step(student, models, batch, job.train.kd_config(), job.train, generator, 0, sync=True)
    assert set(result.terms) == {"sd", "output_kd", "feature_kd", "loss"}
    total = sum(result.terms[k] for k in ("sd", "output_kd", "feature_kd"))  # BK-SDM's weights are all 1
    assert result.terms["loss"] == pytest.approx(total, rel=1e-5)
    assert result.terms["feature_kd"] > 0  # the student lacks the mid block: its up blocks differ
    optimizer_step(student, optimizer, schedule, job.train.max_grad_norm)
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    changed = [k for k, v in student.state_dict().items() if not torch.equal(student_before[k], v)]
    assert len(changed) > 0.9 * len(student_before)


def test_the_checkpoint_holds_a_diffusers_unet_folder_that_resumes_and_loads(worker, tmp_path):
    from pea.train.loop import training_objects

    job, models, student, optimizer, schedule, generator, _ = worker
    folder = save_checkpoint(tmp_path / "ckpt", student, optimizer, schedule, TrainState(step=3), [generator.get_state()],
                             {"lang": "ko"})
    assert all((folder / name).is_file() for name in STUDENT_FILES)
    loaded, info = UNet2DConditionModel.from_pretrained(folder / "unet", output_loading_info=True)
    assert not any(info.values())  # no missing, unexpected or mismatched key
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in student.state_dict().items())
    fresh, fresh_optimizer, fresh_schedule, fresh_generator = training_objects(job, models, "cpu", 0)
    state = load_checkpoint(folder, fresh, fresh_optimizer, fresh_schedule, fresh_generator)
    assert state.step == 3
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in student.state_dict().items())


def test_pea_compress_says_in_one_line_which_recipes_fit(pea_cli, tmp_path):
    unknown = pea_cli("compress", "--recipe", "nope", "--lang", "ko", cwd=tmp_path)
    assert unknown.code != 0 and "no compression recipe 'nope'; known: bk-sdm-base" in unknown.err
    other = pea_cli("compress", "--recipe", "bk-sdm-small", "--lang", "ko", "--preset", "toy", cwd=tmp_path)
    assert other.code != 0 and "use one of: sdxl-small, sdxl-tiny, sdxl-midless, ssd-1b" in other.err
    assert "Traceback" not in unknown.err + other.err


def test_the_language_pipeline_sends_a_compression_config_to_the_compress_flow():
    from flows.pea_flow import pea
    from pea.run_config import RunConfig

    config = RunConfig(train=TrainConfig(method="compress", recipe="sdxl-midless"))
    with pytest.raises(PeaError) as refused:
        pea.fn("ko", config)
    assert "compress deployment" in refused.value.fix and "`pea compress --recipe sdxl-midless --lang ko`" in refused.value.fix


def test_the_compress_flow_refuses_a_recipe_of_another_family_and_a_kd_before_any_stage(tmp_path, monkeypatch):
    from flows.compress_flow import Recipe, compress
    from pea.run_config import RunConfig

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PeaError, match="recipe 'bk-sdm-small' is for sd15 UNets"):
        compress.fn(Recipe["bk-sdm-small"], "ko", RunConfig(preset="tiny-sdxl"))
    with pytest.raises(PeaError, match="does not fit a compression job"):
        compress.fn(Recipe["sdxl-midless"], "ko", RunConfig(preset="tiny-sdxl", train={"kd": {"output_kd": 1.0}}))
    assert not (tmp_path / "pea-data").exists()


def test_an_adapter_distilled_against_a_student_is_a_pea_method_named_apart():
    cfg = TrainConfig(unet_from="pea-unet-sdxl-midless-tiny-sdxl")
    assert cfg.job_name("ko", "tiny-sdxl") == "pea-ko-tiny-sdxl-on-pea-unet-sdxl-midless-tiny-sdxl"
    assert cfg.identity()["unet_from"] == "pea-unet-sdxl-midless-tiny-sdxl"
    assert "unet_from" not in TrainConfig().identity()
    for method in ("lora", "compress"):
        with pytest.raises(ValueError, match="for PEA and its ablations"):
            TrainConfig(method=method, unet_from="x", **({"recipe": "sdxl-midless"} if method == "compress" else {}))


def test_distilling_against_a_student_that_is_not_there_fails_before_a_job(tmp_path):
    profile = load_profile("local", env={"PEA_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path)
    with pytest.raises(PeaError, match="no student UNet of compression run 'pea-unet-x' for 'ko'"):
        train_adapter(profile, KO, TINY, TrainConfig(unet_from="pea-unet-x"))


def test_an_adapter_job_against_a_student_distils_through_the_student_unet(worker, model_cache, tmp_path):
    """The worker loads the compression run's student from storage as its frozen UNet: PEA's KD (teacher path
    and adapter path alike) then runs through the student, which lacks the teacher's mid block."""
    from pea.compress.student import student_files
    from pea.layout import adapter_dir
    from pea.train.loop import _Models, micro_step, training_objects

    storage = Storage(str(tmp_path))
    student = worker[2]
    for path, data in student_files(student, tmp_path / "scratch").items():
        name = Path(path).relative_to(tmp_path / "scratch")
        storage.write_bytes(data, *adapter_dir("ko", "pea-unet-sdxl-midless-tiny-sdxl", *name.parts))
    cfg = TrainConfig(batch_size=4, lr=1e-3, warmup_steps=0, unet_from="pea-unet-sdxl-midless-tiny-sdxl").for_preset(TINY)
    job = TrainJob.model_construct(lang="ko", preset=TINY.name, model_cache=str(model_cache), cached=False,
                                   data_prefix=("shards",), adapter=adapter_config(KO, TINY, cfg), train=cfg)
    models = _Models(job, torch.device("cpu"), storage)
    assert models.base_unet.mid_block is None and not any(p.requires_grad for p in models.base_unet.parameters())
    assert all(torch.equal(models.base_unet.state_dict()[k], v) for k, v in student.state_dict().items())
    adapter, _, _, generator = training_objects(job, models, "cpu", 0)
    batch = worker[6]
    result = micro_step(adapter, models, batch, cfg.kd_config(), cfg, generator, 0, sync=True)
    assert result.terms["feature_kd"] > 0 and all(p.grad is not None for p in adapter.parameters())


def test_pea_train_unet_from_names_the_missing_student_in_one_line(pea_cli, tmp_path):
    result = pea_cli("train", "--lang", "ko", "--unet-from", "pea-unet-x", cwd=tmp_path)
    assert result.code != 0 and "no student UNet of compression run 'pea-unet-x'" in result.err
    assert "Traceback" not in result.err
