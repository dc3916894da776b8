"""The `pea` flow in-process on tiny-sdxl with toy-world data: every stage, then a second run (another training
method, set through the run config) that skips the finished data stages (Prefect cache), trains a new candidate
with that method, registers a second version and lets the gate decide; bad parameters are refused before any
work."""

import pytest
from gate_helpers import expected_decision
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from pea.adapter import load_adapter
from pea.evaluate.config import GateConfig
from pea.tracking import client as mlflow_client
from pea.tracking import find_train_run

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SMALL = {"preset": "tiny-sdxl", "train": {"steps": 10}, "eval": {"max_prompts": 2, "steps": 2}, "data": {"toy_samples": 120}}
UKD = SMALL | {"train": {"steps": 10, "method": "ukd"}}


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=180):
        yield


def _task_states(flow_run_id) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


@pytest.fixture(scope="module")
def runs(harness, tmp_path_factory):
    """In one folder: the pea flow, the pea flow again with another method, then the compress flow on the same
    data (flows/compress_flow.py)."""
    import os

    import ray

    from flows.compress_flow import Recipe, compress
    from flows.pea_flow import pea

    folder, before = tmp_path_factory.mktemp("flow"), os.getcwd()
    os.chdir(folder)
    try:
        first = pea(lang="ko", config=SMALL, return_state=True)
        second = pea(lang="ko", config=UKD, return_state=True)
        student = compress(recipe=Recipe["sdxl-midless"], lang="ko", config=SMALL, return_state=True)
    finally:
        ray.shutdown()
        os.chdir(before)
    return {"folder": folder, "first": first, "second": second, "student": student}


def test_the_flow_runs_every_stage_and_a_rerun_skips_the_finished_ones(runs):
    from pea.profiles import load_profile

    tmp_path, first, second = runs["folder"], runs["first"], runs["second"]
    assert first.is_completed() and second.is_completed(), (first.message, second.message)
    one, two = first.result(), second.result()
    assert one.registration.version == "1" and one.registration.promoted
    assert one.registration.reason == "no champion yet" and one.registration.champion_version == "1"
    assert two.registration.version == "2" and two.run_name != one.run_name
    states = _task_states(second.state_details.flow_run_id)
    assert {states[s] for s in ("translate", "bucket", "cache")} == {"Cached"}, states
    assert states["train"] == "Completed"
    profile = load_profile("local", env={}, cwd=tmp_path)
    methods = [find_train_run(profile.mlflow_tracking_uri, "ko", r.run_name).data.params["train.method"] for r in (one, two)]
    assert methods == ["pea", "ukd"]  # the run config's method is what trained
    storage = profile.storage()
    assert storage.read_json("ko", "shards", "manifest.json")["samples"] == 120
    assert load_adapter(tmp_path / "pea-data" / "storage" / "ko" / "adapters" / two.run_name).config.language == "ko"
    assert storage.glob("ko", "train", two.run_name, "checkpoint_*")
    registry = mlflow_client(profile.mlflow_tracking_uri)
    version = registry.get_model_version("pea-ko", "2")
    # the second evaluation compared against v1; the gate (the flow's default tolerance) must have decided what
    # pea.gate.decide says on the numbers that evaluation recorded, and the champion alias must follow it
    assert storage.read_json("ko", "eval", two.run_name, "metrics.json")["champion_version"] == "1"
    expected = expected_decision(registry, version, GateConfig())
    assert expected.numbers.keys() >= {"candidate_primary", "champion_primary"}, expected  # a real comparison
    assert {k: version.tags.get(k) for k in expected.tags()} == expected.tags()
    assert two.registration.promoted == expected.promote
    assert two.registration.reason == expected.reason == version.tags["pea.gate.reason"]
    champion = str(registry.get_model_version_by_alias("pea-ko", "champion").version)
    assert champion == two.registration.champion_version == ("2" if expected.promote else "1")
    assert two.report == storage.uri("ko", "eval", two.run_name, "index.html")
    with get_client(sync_client=True) as client:
        progress = {a.description: a.data for a in client.read_artifacts() if a.type == "progress"}
    assert progress[f"training {two.run_name}"] == 100.0 and progress[f"evaluating {two.run_name}"] == 100.0


def test_the_compress_flow_distils_evaluates_and_registers_a_student_on_the_cached_data(runs):
    from diffusers import UNet2DConditionModel

    from pea.profiles import load_profile
    from pea.registry import CHAMPION, aliased, download_student

    student = runs["student"]
    assert student.is_completed(), student.message
    result = student.result()
    assert result.run_name.startswith("pea-unet-sdxl-midless-tiny-sdxl-")  # + the flow run's id
    states = _task_states(student.state_details.flow_run_id)
    assert {states[s] for s in ("translate", "bucket", "cache")} == {"Cached"}, states  # the adapters' data
    profile = load_profile("local", env={}, cwd=runs["folder"])
    assert find_train_run(profile.mlflow_tracking_uri, "ko", result.run_name).data.params["train.method"] == "compress"
    reg = result.registration
    assert (reg.model, reg.version, reg.promoted, reg.primary) == ("pea-unet-sdxl-midless", "1", True, "mg_clipscore_en")
    metrics = profile.storage().read_json("ko", "eval", result.run_name, "metrics.json")["metrics"]
    assert set(metrics) == {"candidate", "teacher_en"} and set(metrics["candidate"]) >= {"mg_clipscore_en"}
    version = aliased(profile.mlflow_tracking_uri, "pea-unet-sdxl-midless", CHAMPION).version
    folder = download_student(profile.mlflow_tracking_uri, "pea-unet-sdxl-midless", version, runs["folder"] / "dl")
    assert UNet2DConditionModel.from_pretrained(folder).mid_block is None


def test_bad_parameters_are_refused_before_any_work(harness, tmp_path, monkeypatch):
    from flows.pea_flow import pea

    monkeypatch.chdir(tmp_path)
    for bad, words in (({"lang": "xx"}, ["lang", "ko", "zh"]),
                       ({"lang": "ko", "config": {"train": {"steps": -1}}}, ["steps", "greater than 0"]),
                       ({"lang": "ko", "config": {"train": {"method": "kd"}}}, ["method", "ukd"]),
                       ({"lang": "ko", "config": {"preset": "sd3"}}, ["preset", "tiny-sdxl"])):
        state = pea(**bad, return_state=True)
        assert state.is_failed() and all(w in state.message for w in words), state.message
    assert not (tmp_path / "pea-data").exists()


def test_a_failing_stage_fails_the_flow_with_its_own_message(harness, tmp_path, monkeypatch):
    """Bad input (a missing folder) fails at once: harvest retries only what may pass on a second try."""
    import time

    from flows.pea_flow import pea

    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    gone = tmp_path / "gone"
    sources = [{"name": "gone", "kind": "folder", "uri": str(gone)}]
    state = pea(lang="ko", config={"preset": "tiny-sdxl", "data": {"sources": sources}}, return_state=True)
    assert state.is_failed() and f"source folder {gone} does not exist" in state.message, state.message
    assert time.monotonic() - start < 60  # no 10 + 60 + 300 s of retry backoff


def test_a_stage_whose_output_was_deleted_runs_again_instead_of_returning_its_cached_result(harness, tmp_path):
    """Prefect keeps its cache records outside the data (~/.prefect/storage): after the user deletes the data,
    a cached stage must not return its manifest of files that are gone (training would find no shards)."""
    from data_helpers import make_folder

    from flows.pea_flow import harvest
    from pea.data.sources import SourceSpec
    from pea.languages import get_language
    from pea.profiles import load_profile

    profile = load_profile("local", env={}, cwd=tmp_path)
    source = SourceSpec(name="imgs", kind="folder", uri=str(make_folder(tmp_path / "imgs", n=3)))
    storage = profile.storage()

    def harvest_state() -> str:
        state = harvest(profile, get_language("ko"), [source], return_state=True)
        assert state.is_completed(), state.message
        return _task_states(state.state_details.flow_run_id)["harvest"]

    assert [harvest_state(), harvest_state()] == ["Completed", "Cached"]
    storage.remove("ko", "raw")
    assert harvest_state() == "Completed" and storage.exists("ko", "raw", "imgs", "manifest.json")
    assert harvest_state() == "Cached"
