"""The `pea` flow in-process on tiny-sdxl with toy-world data: every stage, then a second run that skips the
finished data stages (Prefect cache), trains a new candidate, registers a second version and lets the gate
decide; bad parameters are refused before any work."""

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from pea.adapter import load_adapter
from pea.registry import _client

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ARGS = dict(lang="ko", steps=10, eval_prompts=2, eval_steps=2, toy_samples=120)


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=180):
        yield


def _task_states(flow_run_id) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def test_the_flow_runs_every_stage_and_a_rerun_skips_the_finished_ones(harness, tmp_path, monkeypatch):
    import ray

    from flows.pea_flow import pea
    from pea.profiles import load_profile

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PEA_PRESET", "tiny-sdxl")
    try:
        first = pea(**ARGS, return_state=True)
        second = pea(**ARGS, return_state=True)
    finally:
        ray.shutdown()
    assert first.is_completed() and second.is_completed(), (first.message, second.message)
    one, two = first.result(), second.result()
    assert one["version"] == "1" and one["promoted"] and one["reason"] == "no champion yet"
    assert two["version"] == "2" and two["run_name"] != one["run_name"]
    states = _task_states(second.state_details.flow_run_id)
    assert {states[s] for s in ("translate", "bucket", "cache")} == {"Cached"}, states
    assert states["train"] == "Completed"
    profile = load_profile("local", env={"PEA_PRESET": "tiny-sdxl"}, cwd=tmp_path)
    storage = profile.storage()
    assert storage.read_json("ko", "shards", "manifest.json")["samples"] == 120
    assert load_adapter(tmp_path / "pea-data" / "storage" / "ko" / "adapters" / two["run_name"]).config.language == "ko"
    assert storage.glob("ko", "train", two["run_name"], "checkpoint_*")
    version = _client(profile.mlflow_tracking_uri).get_model_version("pea-ko", "2")
    assert version.tags["pea.gate.decision"] in ("promoted", "kept champion")
    assert version.tags["pea.gate.reason"] == two["reason"]
    with get_client(sync_client=True) as client:
        progress = {a.description: a.data for a in client.read_artifacts() if a.type == "progress"}
    assert progress[f"training {two['run_name']}"] == 100.0 and progress[f"evaluating {two['run_name']}"] == 100.0


def test_bad_parameters_are_refused_before_any_work(harness, tmp_path, monkeypatch):
    from flows.pea_flow import pea

    monkeypatch.chdir(tmp_path)
    for bad, words in (({"lang": "xx"}, ["lang", "ko", "zh"]), ({"lang": "ko", "steps": -1}, ["steps", "greater than 0"])):
        state = pea(**bad, return_state=True)
        assert state.is_failed() and all(w in state.message for w in words), state.message
    assert not (tmp_path / "pea-data").exists()


def test_a_failing_stage_fails_the_flow_with_its_own_message(harness, tmp_path, monkeypatch):
    from flows.pea_flow import pea

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PEA_PRESET", "tiny-sdxl")
    gone = tmp_path / "gone"
    state = pea(lang="ko", sources=[{"name": "gone", "kind": "folder", "uri": str(gone)}], return_state=True)
    assert state.is_failed() and f"source folder {gone} does not exist" in state.message, state.message
