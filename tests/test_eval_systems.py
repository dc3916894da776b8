"""External systems in every evaluation (issue 17, items 3 and 4): the systems list of the eval config, the
AltDiffusion-m18 stand-in in the real repo's layout, skipped systems with their reasons, and the one table in
the paper's layout on the report page, in metrics.json, in MLflow and on the leaderboard."""

import html
import json

import pytest
import torch
from mlflow import MlflowClient
from pydantic import ValidationError

from pea.evaluate.config import EvalConfig
from pea.evaluate.stage import evaluate_stage, register_stage
from pea.evaluate.systems import LOADERS, load_external
from pea.evaluate.table import build_table, label
from pea.languages import get_language
from pea.leaderboard import write_leaderboard
from pea.models.tiny_systems import ensure_standin
from pea.presets import get_preset
from pea.profiles import load_profile
from tests.eval_helpers import fake_training_run

KO = get_language("ko")
TINY = get_preset("tiny-sdxl")
PAPER_ORDER = ["mc_clipscore_native", "mg_image_reward", "mg_pickscore", "mg_clipscore_en", "mg_clipscore_native"]
# teacher_en left out: the list is honoured, not topped up
SYSTEMS = ("translate", "tiny-altdiffusion-m18", "altdiffusion-m18")


def test_the_systems_list_defaults_to_the_papers_baselines_and_refuses_unknown_names():
    assert EvalConfig().systems == ("teacher_en", "translate", "altdiffusion-m18")
    for bad in (("candidate",), ("translate", "translate"), ("dall-e",)):
        with pytest.raises(ValidationError, match="systems must be distinct names"):
            EvalConfig(systems=bad)


def test_a_system_that_cannot_be_scored_here_is_skipped_with_the_reason(model_cache, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache
    real = get_preset("sd15")
    loaded, skipped = load_external(("teacher_en", "altdiffusion-m18"), {"ko"}, real, model_cache, "cpu")
    assert loaded == {} and "BAAI/AltDiffusion-m18 are not in the model cache" in skipped["altdiffusion-m18"]
    _, skipped = load_external(("altdiffusion-m18",), {"ko", "sw"}, real, model_cache, "cpu")
    assert skipped["altdiffusion-m18"].startswith("not trained for sw")
    _, skipped = load_external(("altdiffusion-m18", "tiny-altdiffusion-m18"), {"ko"}, TINY, model_cache, "cpu")
    assert "not scored next to the built-locally base model" in skipped["altdiffusion-m18"]
    assert "tiny-altdiffusion-m18" not in skipped


def test_the_altdiffusion_standin_has_the_real_layout_and_draws_at_its_own_resolution(model_cache):
    folder = ensure_standin("tiny-altdiffusion-m18", model_cache)
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".complete"}
    assert files == {"model_index.json", "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
                     "tokenizer/sentencepiece.bpe.model", "tokenizer/special_tokens_map.json",
                     "tokenizer/tokenizer_config.json", "text_encoder/config.json", "text_encoder/pytorch_model.bin",
                     "unet/config.json", "unet/diffusion_pytorch_model.bin", "vae/config.json",
                     "vae/diffusion_pytorch_model.bin", "safety_checker/config.json", "safety_checker/pytorch_model.bin"}
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "AltDiffusionPipeline"
    assert index["text_encoder"] == ["alt_diffusion", "RobertaSeriesModelWithTransformation"]
    encoder = json.loads((folder / "text_encoder" / "config.json").read_text())
    assert encoder["has_pre_transformation"] and encoder["project_dim"] != encoder["hidden_size"]
    draw = LOADERS["alt_diffusion"](folder, "cpu")
    out = draw(["빨간 원", "a red circle"], num_inference_steps=1, guidance_scale=5.0,
               generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert [image.size for image in out.images] == [(32, 32)] * 2  # UNet sample 8 x the VAE's factor 4


def test_the_toy_judges_columns_follow_the_mc_column():
    metrics = {"candidate": {"mg_judge": 0.5, "mg_seen_judge": 0.6, "mc_judge_word": 0.4, "mg_shape": 0.9}}
    table = build_table(metrics, {"altdiffusion-m18": "why"}, ["candidate", "champion"])  # skipped: kept all the same
    assert table["columns"] == ["mc_judge_word", "mg_judge", "mg_seen_judge", "mg_shape"]
    assert [row["system"] for row in table["rows"]] == ["candidate", "altdiffusion-m18"]
    assert label("mg_seen_judge") == ("MG_SEEN", "judge") and label("mg_pickscore") == ("MG", "PickScore")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, model_cache):
    """One evaluation on tiny-sdxl scoring the AltDiffusion stand-in and skipping the real AltDiffusion, then
    registered, so that the leaderboard reads it back from MLflow."""
    root = tmp_path_factory.mktemp("eval-systems")
    profile = load_profile("local", env={"PEA_DATA_DIR": str(root / "data")}, cwd=root)
    (root / "data").mkdir()
    (root / "data" / "models").symlink_to(model_cache, target_is_directory=True)
    fake_training_run(profile, "tiny-sdxl", "ko", "run-a", 0, root / "scratch")
    cfg = EvalConfig(max_prompts=2, steps=1, batch_size=4, report_prompts=1, systems=SYSTEMS)
    summary = evaluate_stage(profile, KO, TINY, "run-a", cfg)
    register_stage(profile, KO, TINY, "run-a")
    return profile, summary


def test_the_systems_list_is_honoured_and_the_standin_is_scored_like_the_candidate(evaluated):
    _, summary = evaluated
    assert set(summary.metrics) == {"candidate", "translate", "tiny-altdiffusion-m18"}
    assert set(summary.metrics["tiny-altdiffusion-m18"]) == set(summary.metrics["candidate"]) == set(PAPER_ORDER)
    assert summary.metrics["tiny-altdiffusion-m18"] != summary.metrics["candidate"]


def test_the_missing_altdiffusion_is_a_row_with_its_reason_in_the_result_and_the_report(evaluated):
    profile, summary = evaluated
    reason = summary.skipped["altdiffusion-m18"]
    assert "built-locally base model of preset 'tiny-sdxl'" in reason
    assert f"altdiffusion-m18 skipped: {reason}" in summary.notes
    stored = json.loads(profile.storage().read_bytes("ko", "eval", "run-a", "metrics.json"))
    assert stored["table"] == summary.table and stored["skipped"] == summary.skipped
    assert summary.table["columns"] == PAPER_ORDER
    assert summary.table["rows"][-1] == {"system": "altdiffusion-m18", "skipped": reason}
    assert [row["system"] for row in summary.table["rows"]] == ["candidate", *SYSTEMS]
    page = profile.storage().read_bytes("ko", "eval", "run-a", "index.html").decode()
    assert f"skipped: {html.escape(reason)}" in page
    _assert_paper_layout(page)


def test_mlflow_and_the_leaderboard_show_every_system_in_the_papers_layout(evaluated, tmp_path):
    profile, summary = evaluated
    run = MlflowClient(profile.mlflow_tracking_uri).get_run(summary.train_run_id).data
    assert run.metrics["eval.tiny-altdiffusion-m18.mc_clipscore_native"] == pytest.approx(
        summary.metrics["tiny-altdiffusion-m18"]["mc_clipscore_native"])
    assert run.tags["pea.eval.skipped.altdiffusion-m18"] == summary.skipped["altdiffusion-m18"]
    page = write_leaderboard(profile.mlflow_tracking_uri, ["ko"], tmp_path / "board.html").read_text()
    table = page[page.index("every system of its evaluation"):]
    rows = [table.index(f"<th>{name}</th>") for name in ("candidate", "translate", "tiny-altdiffusion-m18")]
    assert rows == sorted(rows) and "skipped: " in table
    _assert_paper_layout(table)


def _assert_paper_layout(page: str) -> None:
    """The MC column first, then ImageReward, PickScore, CLIPScore_en and the native CLIPScore on MG."""
    heads = [page.index(f"<small>{key}") for key in PAPER_ORDER]
    assert heads == sorted(heads) and "mc_clipscore_native (gate)" in page and "mg_image_reward (guard)" in page
