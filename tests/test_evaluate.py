"""Evaluation and registration end to end on tiny-sdxl: the report, the registry's versions and aliases,
the gate, idempotent registration, `pea models`, `pea generate` from the registry, the pyfunc model; and
that images are scored without the SD1.5 safety checker."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from pea.evaluate.config import EvalConfig, GateConfig
from pea.evaluate.stage import evaluate_stage, register_stage, scoring_pipeline
from pea.gate import decide
from pea.languages import get_language
from pea.models.loading import load_pipeline
from pea.presets import get_preset
from pea.profiles import load_profile
from pea.names import model_name
from pea.registry import CHAMPION, _tracking, version_by_alias
from pea.tracking import client as registry_client
from tests.browser import chromium, render
from tests.eval_helpers import fake_training_run
from tests.servers import mlflow_ui

pytestmark = [pytest.mark.slow, pytest.mark.integration]
KO = get_language("ko")
TINY = get_preset("tiny-sdxl")
CFG = EvalConfig(max_prompts=3, steps=2, batch_size=4, report_prompts=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory, model_cache):
    """Two evaluated runs: run-a registered first (champion), run-b evaluated against it and registered."""
    root = tmp_path_factory.mktemp("eval")
    env = {"PEA_DATA_DIR": str(root / "data")}
    profile = load_profile("local", env=env, cwd=root)
    profile = profile.model_copy(update={"data_dir": root / "data"})
    # the tiny models are shared with the rest of the session
    (root / "data").mkdir()
    (root / "data" / "models").symlink_to(model_cache, target_is_directory=True)
    scratch = root / "scratch"
    fake_training_run(profile, "tiny-sdxl", "ko", "run-a", 0, scratch)
    first = evaluate_stage(profile, KO, TINY, "run-a", CFG)
    reg_a = register_stage(profile, KO, TINY, "run-a")
    again = register_stage(profile, KO, TINY, "run-a")
    fake_training_run(profile, "tiny-sdxl", "ko", "run-b", 1, scratch)
    second = evaluate_stage(profile, KO, TINY, "run-b", CFG)
    reg_b = register_stage(profile, KO, TINY, "run-b", GateConfig(tolerance=0.05))
    return {"profile": profile, "env": env, "root": root, "first": first, "second": second, "reg_a": reg_a,
            "again": again, "reg_b": reg_b, "scratch": scratch}


def test_images_are_scored_without_the_sd15_safety_checker(model_cache):
    preset = get_preset("tiny-sd15")
    shipped = load_pipeline(preset, model_cache)  # laid out as the hub's SD1.5: a safety checker included
    with torch.no_grad():
        shipped.safety_checker.concept_embeds_weights.fill_(-10)  # flag every image
    draw = dict(prompt="a red circle", num_inference_steps=2, output_type="np")
    assert shipped(**draw, generator=torch.Generator().manual_seed(0)).images.max() == 0  # blacked out
    pipe = scoring_pipeline(preset, model_cache, "cpu")
    assert pipe.safety_checker is None and not pipe.config.requires_safety_checker
    assert pipe(**draw, generator=torch.Generator().manual_seed(0)).images.max() > 0


def test_every_system_is_scored_on_the_paper_metrics(world):
    m = world["first"].metrics
    assert set(m) == {"candidate", "teacher_en", "translate"}
    assert set(m["candidate"]) == {"mg_clipscore_native", "mg_clipscore_en", "mg_image_reward", "mg_pickscore",
                                   "mc_clipscore_native"}
    assert "mc_clipscore_native" not in m["teacher_en"]  # the English teacher is the MG reference only
    assert set(world["second"].metrics) == {"candidate", "champion", "teacher_en", "translate"}
    assert world["second"].champion_version == "1"
    assert len(world["first"].prompts["mg"]) == 3 and len(world["first"].prompts["mc"]) == 3


def test_the_champion_scored_in_the_second_run_is_the_first_candidate(world):
    a, b = world["first"].metrics["candidate"], world["second"].metrics["champion"]
    assert b == pytest.approx(a)  # same adapter, same seeds, same prompts


def test_the_report_shows_prompts_images_metrics_and_curves(world):
    storage = world["profile"].storage()
    page = storage.read_bytes("ko", "eval", "run-b", "index.html").decode()
    prompt = world["second"].prompts["mg"][0]
    assert prompt.native in page and prompt.english in page
    # MG: 2 prompts x 4 systems, MC: 2 x 3 (no English teacher), and the training curves
    assert page.count("<img src='data:image/png;base64,") == 2 * 4 + 2 * 3 + 1
    assert "mc_clipscore_native (gate)" in page and "champion" in page
    for name in ("grid.png", "curves.png", "metrics.json"):
        assert storage.exists("ko", "eval", "run-b", name)
    client = MlflowClient(world["profile"].mlflow_tracking_uri)
    run_id = world["second"].train_run_id
    assert {a.path for a in client.list_artifacts(run_id, "report")} >= {"report/index.html", "report/grid.png"}
    assert "eval.candidate.mc_clipscore_native" in client.get_run(run_id).data.metrics


def test_the_first_version_is_champion_and_registering_again_adds_nothing(world):
    assert world["reg_a"].version == "1" and world["reg_a"].promoted and world["reg_a"].new_version
    assert world["again"].version == "1" and not world["again"].new_version
    client = registry_client(world["profile"].mlflow_tracking_uri)
    assert len(client.search_model_versions("name = 'pea-ko'")) == 2


def test_the_second_version_is_challenger_and_the_gate_decided_from_the_numbers(world):
    profile, reg = world["profile"], world["reg_b"]
    uri = profile.mlflow_tracking_uri
    assert reg.version == "2" and reg.new_version
    expected = decide(world["second"].metrics["candidate"], world["second"].metrics["champion"],
                      "mc_clipscore_native", "mg_image_reward", GateConfig(tolerance=0.05))
    assert reg.promoted == expected.promote and reg.reason == expected.reason
    assert str(version_by_alias(uri, "ko", "challenger").version) == "2"
    assert str(version_by_alias(uri, "ko", CHAMPION).version) == ("2" if expected.promote else "1")
    tags = registry_client(uri).get_model_version(model_name("ko"), "2").tags
    assert tags["pea.gate.reason"] == expected.reason and tags["pea.base_model"] == "tiny-sdxl"
    assert tags["pea.student_encoder"] == "tiny-byt5" and tags["pea.data_digest"] == "digest-1"
    assert tags["pea.code_revision"] == "rev0" and float(tags["pea.primary_value"]) > 0


def test_pea_models_lists_versions_aliases_and_primary_metrics(world, pea_cli):
    out = pea_cli("models", "--lang", "ko", env=world["env"], cwd=world["root"])
    assert out.code == 0, out.err
    assert "pea-ko" in out.out and "champion" in out.out and "challenger" in out.out, out.out
    assert "mc_clipscore_native" in out.out
    empty = pea_cli("models", "--lang", "ja", env=world["env"], cwd=world["root"])
    assert empty.code == 0 and "pea-ja: no registered versions" in empty.out


def test_generate_loads_the_champion_from_the_registry(world, pea_cli, tmp_path):
    out = pea_cli("generate", "빨간 원", "--lang", "ko", "--adapter", "models:/pea-ko@champion", "--steps", "2", "--preset", "tiny-sdxl",
                  "--out", str(tmp_path / "x.png"), env=world["env"], cwd=world["root"])
    assert out.code == 0, out.err
    assert (tmp_path / "x.png").stat().st_size > 0
    missing = pea_cli("generate", "빨간 원", "--lang", "ko", "--adapter", "models:/pea-ko@nope", "--preset", "tiny-sdxl",
                      "--out", str(tmp_path / "y.png"), env=world["env"], cwd=world["root"])
    assert missing.code == 2 and "does not exist in the registry" in missing.err


def test_the_registered_pyfunc_gives_prompt_embeddings(world):
    import mlflow

    with _tracking(world["profile"].mlflow_tracking_uri):
        model = mlflow.pyfunc.load_model("models:/pea-ko@challenger")
    assert model.metadata.signature.inputs.to_dict() == [{"type": "string", "required": True}]  # from the type hint
    out = model.predict(pd.DataFrame({"prompt": ["빨간 원", "파란 사각형"]}))
    assert len(out) == 2 and len(out["prompt_embeds"][0]) == 96 and len(out["prompt_embeds"][0][0]) == 64
    assert len(out["pooled_prompt_embeds"][0]) == 32
    assert model.predict(["빨간 원"])["prompt_embeds"][0] == out["prompt_embeds"][0]  # a plain list of prompts too


def test_the_pyfunc_model_is_defined_without_mlflow_warnings():
    """MLflow checks `predict` when the class is defined (the registered model's code is loaded by it)."""
    code = "import warnings; warnings.simplefilter('default'); import pea.serving"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Warning" not in proc.stderr, proc.stderr


def test_a_champion_whose_artifacts_are_gone_is_kept_with_the_reason(world):
    profile = world["profile"]
    client = registry_client(profile.mlflow_tracking_uri)
    champion = version_by_alias(profile.mlflow_tracking_uri, "ko", CHAMPION)
    source = client.get_model_version_download_uri(model_name("ko"), champion.version)
    shutil.rmtree(source.removeprefix("file://"))
    fake_training_run(profile, "tiny-sdxl", "ko", "run-c", 2, world["scratch"])
    summary = evaluate_stage(profile, KO, TINY, "run-c", CFG)
    assert "champion" not in summary.metrics and "could not be evaluated" in summary.notes[0]
    reg = register_stage(profile, KO, TINY, "run-c")
    assert not reg.promoted and "could not be evaluated" in reg.reason
    assert version_by_alias(profile.mlflow_tracking_uri, "ko", CHAMPION).version == champion.version
    metrics = json.loads(profile.storage().read_bytes("ko", "eval", "run-c", "metrics.json"))
    assert metrics["champion_problem"]


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_mlflow_ui_shows_the_model_and_its_champion(world, tmp_path):
    uri = world["profile"].mlflow_tracking_uri
    champion = str(version_by_alias(uri, "ko", CHAMPION).version)
    with mlflow_ui(uri) as url:
        dom = render(f"{url}/#/models/pea-ko", tmp_path / "chromium", screenshot=tmp_path / "models.png")
    assert "pea-ko" in dom and "champion" in dom
    assert f"Version {champion}" in dom and "challenger" in dom
    assert (tmp_path / "models.png").stat().st_size > 10_000


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_leaderboard_shows_champion_and_challenger_with_metrics_and_samples(world, pea_cli, tmp_path):
    page = tmp_path / "board.html"
    out = pea_cli("dashboard", "--out", str(page), env=world["env"], cwd=world["root"])
    assert out.code == 0, out.err
    dom = render(page.as_uri(), tmp_path / "chromium", screenshot=tmp_path / "board.png")
    assert "pea-ko" in dom and "champion" in dom and "challenger" in dom and "mc_clipscore_native" in dom
    assert dom.count("<figure>") >= 2 and "pea-ja" in dom and "no registered versions yet" in dom
    assert (tmp_path / "board.png").stat().st_size > 10_000
