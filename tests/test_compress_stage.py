"""A compression run's evaluate and register stages on tiny-sdxl (#18 item 3): the student against its teacher on
the English MG prompts, its version of pea-unet-<recipe> behind the champion gate, and the registered champion
loaded by UNet2DConditionModel.from_pretrained into a stock diffusers pipeline. The runs are made without Ray
(tests/eval_helpers.py) by the functions a real job saves its output with."""

import pytest
import torch

from pea.errors import PeaError
from pea.evaluate.config import EvalConfig, GateConfig
from pea.evaluate.stage import evaluate_stage, register_stage
from pea.gate import decide
from pea.languages import get_language
from pea.presets import get_preset
from pea.profiles import load_profile
from pea.registry import CHALLENGER, CHAMPION, aliased, download_student
from tests.eval_helpers import fake_compression_run, fake_training_run

pytestmark = [pytest.mark.slow, pytest.mark.integration]
KO = get_language("ko")
TINY = get_preset("tiny-sdxl")
RECIPE, MODEL = "sdxl-midless", "pea-unet-sdxl-midless"
CFG = EvalConfig(max_prompts=3, steps=2, batch_size=4, report_prompts=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory, model_cache):
    """run-a (the recipe's student as the teacher's blocks make it) evaluated and registered first, then run-b
    (its weights moved by noise) evaluated against it and registered."""
    root = tmp_path_factory.mktemp("compress-stage")
    profile = load_profile("local", env={"PEA_DATA_DIR": str(root / "data")}, cwd=root)
    (root / "data").mkdir()  # the tiny models are shared with the rest of the session
    (root / "data" / "models").symlink_to(model_cache, target_is_directory=True)
    fake_compression_run(profile, TINY.name, "ko", "run-a", RECIPE, 0.0, root / "scratch")
    first = evaluate_stage(profile, KO, TINY, "run-a", CFG)
    reg_a, again = register_stage(profile, KO, TINY, "run-a"), register_stage(profile, KO, TINY, "run-a")
    fake_compression_run(profile, TINY.name, "ko", "run-b", RECIPE, 0.05, root / "scratch")
    second = evaluate_stage(profile, KO, TINY, "run-b", CFG)
    reg_b = register_stage(profile, KO, TINY, "run-b", GateConfig(tolerance=0.05))
    return {"profile": profile, "root": root, "first": first, "second": second, "reg_a": reg_a, "again": again,
            "reg_b": reg_b}


def test_the_student_is_scored_against_its_teacher_on_english_prompts_by_the_english_metrics(world):
    first = world["first"]
    assert list(first.metrics) == ["candidate", "teacher_en"]  # no champion yet
    assert set(first.prompts) == {"mg"} and first.primary == "mg_clipscore_en" and first.guard == "mg_image_reward"
    assert set(first.metrics["candidate"]) == {"mg_clipscore_en", "mg_image_reward", "mg_pickscore"}
    assert [row["system"] for row in first.table["rows"]] == ["candidate", "teacher_en"]
    keeps = [note for note in first.notes if note.startswith("the student keeps")]  # per metric the teacher scores > 0
    assert keeps and all(" x the teacher's mg_" in note for note in keeps)
    assert world["profile"].storage().exists("ko", "eval", "run-a", "index.html")


def test_the_second_student_is_scored_beside_the_champion_and_differs_from_it(world):
    second = world["second"]
    assert list(second.metrics) == ["candidate", "champion", "teacher_en"]
    assert second.champion_version == world["reg_a"].version
    assert second.metrics["champion"] == pytest.approx(world["first"].metrics["candidate"])  # same seeds, same UNet
    assert second.metrics["candidate"] != second.metrics["champion"]


def test_students_register_as_pea_unet_recipe_behind_the_champion_gate(world):
    uri = world["profile"].mlflow_tracking_uri
    reg_a, again, reg_b = world["reg_a"], world["again"], world["reg_b"]
    assert (reg_a.model, reg_a.version, reg_a.promoted, reg_a.reason) == (MODEL, "1", True, "no champion yet")
    assert (again.version, again.new_version) == ("1", False)
    expected = decide(world["second"].metrics["candidate"], world["second"].metrics["champion"],
                      "mg_clipscore_en", "mg_image_reward", GateConfig(tolerance=0.05))
    assert (reg_b.model, reg_b.version, reg_b.promoted) == (MODEL, "2", expected.promote)
    assert str(aliased(uri, MODEL, CHALLENGER).version) == "2"
    assert str(aliased(uri, MODEL, CHAMPION).version) == ("2" if expected.promote else "1")
    tags = aliased(uri, MODEL, CHALLENGER).tags
    assert tags["pea.recipe"] == RECIPE and tags["pea.train_run"] == "run-b" and tags["pea.preset"] == TINY.name
    assert tags["pea.gate.decision"] == ("promoted" if expected.promote else "kept champion")


def test_the_registered_champion_loads_into_a_stock_pipeline(world, tmp_path):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from pea.models.loading import pipeline_source

    profile = world["profile"]
    version = aliased(profile.mlflow_tracking_uri, MODEL, CHAMPION).version
    folder = download_student(profile.mlflow_tracking_uri, MODEL, version, tmp_path)
    unet, info = UNet2DConditionModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert unet.mid_block is None  # the recipe's student, not the teacher
    pipe = StableDiffusionXLPipeline.from_pretrained(pipeline_source(TINY, profile.model_cache), unet=unet)
    image = pipe("a red cube", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np").images
    assert image.shape[0] == 1 and image.std() > 0


def test_a_student_evaluated_with_another_preset_fails_naming_its_teacher(world):
    with pytest.raises(PeaError, match="distilled preset 'tiny-sdxl'.*--preset tiny-sdxl"):
        evaluate_stage(world["profile"], KO, get_preset("toy"), "run-a", CFG)


@pytest.fixture(scope="module")
def on_student(world):
    """An adapter distilled against run-a's student (train.unet_from) evaluated before pea-ko has a champion, then
    the language's adapter distilled against the teacher registered as pea-ko's champion, then the first evaluated
    again and registered."""
    profile, scratch = world["profile"], world["root"] / "scratch"
    fake_training_run(profile, TINY.name, "ko", "on-a", 1, scratch, {"train.method": "pea", "train.unet_from": "run-a"})
    alone = evaluate_stage(profile, KO, TINY, "on-a", CFG)
    fake_training_run(profile, TINY.name, "ko", "plain", 0, scratch)
    plain = evaluate_stage(profile, KO, TINY, "plain", CFG)
    register_stage(profile, KO, TINY, "plain")
    both = evaluate_stage(profile, KO, TINY, "on-a", CFG)
    return {"alone": alone, "plain": plain, "both": both, "reg": register_stage(profile, KO, TINY, "on-a")}


def test_an_adapter_distilled_against_a_student_is_scored_on_it_beside_the_teacher_trained_champion(on_student):
    alone, plain, both = on_student["alone"], on_student["plain"], on_student["both"]
    assert "pea-ko has no champion to plug into the student" in alone.skipped["teacher_trained"]
    rows = [row["system"] for row in both.table["rows"]]
    assert rows[:2] == ["candidate", "teacher_trained"] and "teacher_en" in rows
    # every system draws with the student: the English row is the student's, not the teacher's of pea-ko's run
    assert both.metrics["teacher_en"] != plain.metrics["teacher_en"]
    assert both.metrics["candidate"] == pytest.approx(alone.metrics["candidate"])  # same adapter, UNet and seeds
    assert both.metrics["teacher_trained"] != plain.metrics["candidate"]  # pea-ko's champion, on the student


def test_an_adapter_distilled_against_a_student_registers_apart_from_the_teacher_ones(on_student, world):
    uri = world["profile"].mlflow_tracking_uri
    reg = on_student["reg"]
    assert (reg.model, reg.version, reg.reason) == ("pea-ko-on-sdxl-midless", "1", "no champion yet")
    tags = aliased(uri, "pea-ko-on-sdxl-midless", CHAMPION).tags
    assert tags["pea.unet_recipe"] == RECIPE and tags["pea.unet_from"] == "run-a"
    assert str(aliased(uri, "pea-ko", CHAMPION).version) == "1"  # the teacher's champion is untouched
