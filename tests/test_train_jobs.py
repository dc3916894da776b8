"""Training as a Ray job (pea.train.jobs): a local Ray head whose dashboard (the Jobs API) listens on 127.0.0.1,
stopped at the end. One real tiny training job (submitted, attached to by a second caller, read back by a third),
and trivial jobs for the attempts' logic (failed, stopped, interrupted, another request)."""

import os
import shutil
import subprocess
import tempfile
import threading
import time
from types import SimpleNamespace

import pytest
from dashboard_helpers import free_port
from data_helpers import make_folder

from pea.data.sources import SourceSpec
from pea.data.translate import translate
from pea.errors import PeaError
from pea.languages import get_language
from pea.profiles import load_profile
from pea.presets import get_preset
from pea.stages import bucket_stage, cache_stage, harvest_stage
from pea.train import entry, jobs
from pea.train.config import TrainConfig, TrainSwitches
from pea.train.entry import cluster_profile
from pea.train.jobs import JobRequest, RunJobs, entrypoint
from pea.train.run import train_adapter

pytestmark = [pytest.mark.slow, pytest.mark.integration]
KO = get_language("ko")
TINY = get_preset("tiny-sdxl")
SLEEP = "python -c 'import time; time.sleep(60)'"
PASSWORD = "s3cr3t-pw"


@pytest.fixture(scope="module")
def head():
    """A local Ray head with its Jobs API on 127.0.0.1 (a free port); yields its address. Its own temporary
    folder: a job's driver finds its cluster ("auto") by the address file there, which another Ray started on
    this machine (another test run) would otherwise overwrite."""
    import ray
    from ray.job_submission import JobSubmissionClient

    port, folder = free_port(), tempfile.mkdtemp(prefix="pea-ray-")
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             _node_ip_address="127.0.0.1", _temp_dir=folder,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # the dashboard may still be starting its job module
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    yield address
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(jobs, "POLL_S", 0.3)
    monkeypatch.setattr(jobs, "UNREACHABLE_S", 20)  # a head that went away fails the test, not after 10 minutes


def _jobs(head, run_name: str) -> RunJobs:
    from ray.job_submission import JobSubmissionClient

    return RunJobs(JobSubmissionClient(head), "ko", run_name)


def _attempts(head, run_name: str) -> list[str]:
    from ray.job_submission import JobSubmissionClient

    return sorted(j.submission_id for j in JobSubmissionClient(head).list_jobs()
                  if j.metadata.get(jobs.RUN) == run_name)


def _wait_for(run: RunJobs, status: str = "RUNNING", timeout_s: float = 60):
    """The run's latest job, once it has `status`."""
    deadline = time.monotonic() + timeout_s
    while (latest := run.latest()) is None or str(latest.status) != status:
        assert time.monotonic() < deadline, f"no {status} job of {run.run_name}: {latest}"
        time.sleep(0.3)
    return latest


def test_a_training_job_is_attached_to_and_read_back(head, fast, tmp_path, model_cache):
    """The first caller submits; a second caller of the same run name, while it runs, attaches to the same job;
    after it succeeded a third caller gets the result without a new job."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(model_cache)  # the session's tiny models
    profile = load_profile("local", cwd=tmp_path, env={"PEA_DATA_DIR": str(data), "PEA_RAY__JOBS_ADDRESS": head})
    harvest_stage(profile, KO, SourceSpec(name="local", kind="folder", uri=str(make_folder(tmp_path / "imgs", n=16))))
    translate(profile.storage(), "ko", "kor_Hang", "none", lambda: None)
    bucket_stage(profile, KO, TINY)
    cache_stage(profile, KO, TINY, batch_size=16)
    cfg = TrainConfig(steps=6, batch_size=4, log_every=2, checkpoint_every=3, lr=3e-3, warmup_steps=1, run_name="job")
    first_log, second_log, results = [], [], {}

    def first():
        results["first"] = train_adapter(profile, KO, TINY, cfg, TrainSwitches(), job_log=first_log.append)

    caller = threading.Thread(target=first)
    caller.start()
    running = _wait_for(_jobs(head, "job"))
    results["second"] = train_adapter(profile, KO, TINY, cfg, TrainSwitches(), job_log=second_log.append)
    caller.join(timeout=120)
    assert results["first"] == results["second"]
    assert results["first"].steps == 6
    assert profile.storage().exists("ko", "adapters", "job", "adapter.safetensors")
    assert first_log[0] == "submitted training job train-ko-job-1"
    assert second_log[0] == f"attaching to training job {running.submission_id} (running)"
    assert any("step 6/6" in line for line in first_log + second_log), first_log
    assert running.entrypoint.startswith("python -m pea.train.entry train-ko-job-1 ")

    third_log = []
    assert train_adapter(profile, KO, TINY, cfg, TrainSwitches(), job_log=third_log.append) == results["first"]
    assert third_log == [] and _attempts(head, "job") == ["train-ko-job-1"]


def test_failed_and_stopped_attempts_are_submitted_again(head, fast):
    run, seen = _jobs(head, "attempts"), []
    failed = run.run(lambda sid: "python -c 'import sys; sys.exit(3)'", "r1", seen.append)
    assert (failed.submission_id, str(failed.status)) == ("train-ko-attempts-1", "FAILED")

    ended = {}
    waiter = threading.Thread(target=lambda: ended.update(job=run.run(lambda sid: SLEEP, "r1", seen.append)))
    waiter.start()
    assert _wait_for(run).submission_id == "train-ko-attempts-2"
    with pytest.raises(PeaError, match="started with another config"):
        run.run(lambda sid: SLEEP, "r2", seen.append)
    assert run.stop() == "train-ko-attempts-2"
    waiter.join(timeout=60)
    assert str(ended["job"].status) == "STOPPED"

    done = run.run(lambda sid: "python -c 'print(\"done\")'", "r1", seen.append)
    assert (done.submission_id, str(done.status)) == ("train-ko-attempts-3", "SUCCEEDED")
    assert "done" in seen
    assert run.run(lambda sid: SLEEP, "r1", seen.append).submission_id == "train-ko-attempts-3"  # no new job
    assert run.stop() is None
    assert _attempts(head, "attempts") == [f"train-ko-attempts-{n}" for n in (1, 2, 3)]


def test_an_interrupted_caller_leaves_the_job_running_and_stop_ends_it(head, fast, caplog, pea_cli, tmp_path,
                                                                        monkeypatch):
    """Ctrl-C (or a Prefect worker that stops) ends the waiting, not the job; `pea train --stop` ends the job."""
    run = _jobs(head, "interrupted")

    def interrupted(seconds):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:  # Ctrl-C while the caller waits between two looks at the job
        patched.setattr(jobs, "time", SimpleNamespace(monotonic=time.monotonic, sleep=interrupted))
        with pytest.raises(KeyboardInterrupt):
            run.run(lambda sid: SLEEP, "r1", lambda line: None)
    _wait_for(run, "RUNNING")
    assert "pea train --lang ko --run-name interrupted --stop" in caplog.text
    stop = ("train", "--lang", "ko", "--run-name", "interrupted", "--stop")
    env = {"PEA_RAY__JOBS_ADDRESS": head}
    assert pea_cli(*stop, env=env, cwd=tmp_path).out == "stopping training job train-ko-interrupted-1\n"
    _wait_for(run, "STOPPED")
    assert pea_cli(*stop, env=env, cwd=tmp_path).out == "no training job of interrupted is running\n"


def test_the_dashboard_never_sees_a_password_and_the_head_brings_its_own(tmp_path):
    uri = f"http://pea:{PASSWORD}@mlflow.example:5000"
    profile = load_profile("cluster", env={"PEA_MLFLOW_TRACKING_URI": uri})
    request = JobRequest(profile=profile.model_dump(mode="json"), lang="ko", preset="sdxl",
                         train=TrainConfig(run_name="r"), switches=TrainSwitches(), override_config=False)
    shown = entrypoint("train-ko-r-1", request) + request.digest()
    assert PASSWORD not in shown and "http://pea:***@mlflow.example:5000" in shown

    on_head = cluster_profile(request.profile, {"PEA_PROFILE": "cluster", "PEA_MLFLOW_TRACKING_URI": uri})
    assert on_head.mlflow_tracking_uri == uri
    assert on_head.ray.address == "auto" and on_head.ray.jobs_address is None  # it trains in the job's driver
    with pytest.raises(PeaError, match="PEA_MLFLOW_TRACKING_URI") as e:
        cluster_profile(request.profile, {"PEA_PROFILE": "cluster"})
    assert PASSWORD not in str(e.value)


def test_the_callers_get_the_drivers_error_in_one_line(tmp_path, model_cache):
    """The driver leaves its PeaError in the run's folder; whoever waits for the job raises it as `pea train`
    in one process would (here: the driver fails before it needs Ray)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(model_cache)
    profile = load_profile("local", cwd=tmp_path, env={"PEA_DATA_DIR": str(data)})
    request = JobRequest(profile=profile.model_dump(mode="json"), lang="ko", preset="tiny-sdxl",
                         train=TrainConfig(run_name="r"), switches=TrainSwitches(), override_config=False)
    assert entry.main(["train-ko-r-1", request.model_dump_json()]) == 2
    failed = SimpleNamespace(submission_id="train-ko-r-1", status="FAILED", message="exit code 2")
    with pytest.raises(PeaError, match="no training shards for 'ko'") as e:
        jobs._outcome(profile, RunJobs(None, "ko", "r"), failed)
    assert "pea harvest" in e.value.fix


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv on PATH")
def test_the_workers_of_a_uv_run_driver_run_in_its_python(head):
    """Ray's `uv run` hook would give the workers `uv run python` and a virtualenv of their own; with pea.cluster
    they run in the driver's Python, even when the driver imported Ray first."""
    import ray

    code = ("import sys, ray\n"
            "from pea.cluster import connect\n"
            "from pea.profiles import load_profile\n"
            f"connect(load_profile('local', env={{'PEA_RAY__ADDRESS': {ray.get_runtime_context().gcs_address!r}}}))\n"
            "print(ray.get_runtime_context().runtime_env.get('py_executable'))\n"
            "print(ray.get(ray.remote(lambda: sys.executable).remote()) == sys.executable)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "RAY_ADDRESS")}
    out = subprocess.run(["uv", "run", "--no-sync", "python", "-c", code], capture_output=True, text=True,
                         env=env, timeout=180, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.split() == ["None", "True"], out.stderr[-2000:]
