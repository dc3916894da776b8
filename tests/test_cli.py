import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pea.errors import PeaError

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"preset": "tiny-sdxl", "train": {"steps": 10}, "eval": {"max_prompts": 2, "steps": 2}, "data": {"toy_samples": 120}}


def _pea(*args, **kw):
    code = "import sys; from flows.cli import main; sys.argv = ['pea', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, **kw)


@pytest.mark.parametrize("args", [["--help"], ["languages"], ["presets"]])
def test_light_commands_do_not_import_torch(args):
    code = (
        "import sys; from flows.cli import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'prefect' not in sys.modules, 'prefect imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout


def test_languages_table_lists_every_code():
    out = _pea("languages").stdout
    for code in ("zh", "ru", "ja", "ko", "it", "multilingual"):
        assert f" {code} " in out


@pytest.mark.parametrize(
    "args, words",
    [
        (["train-language", "--lang", "xx"], ["unknown language 'xx'", "ko"]),
        (["train-language", "--lang", "ko", "--preset", "sd3"], ["preset 'sd3' is not valid", "tiny-sdxl"]),
        (["train-language", "--lang", "ko", "--method", "tkdd"], ["train.method 'tkdd'", "ukd"]),
        (["profile", "--profile", "nope"], ["unknown profile 'nope'", "cluster"]),
    ],
)
def test_bad_input_is_one_clear_line_without_traceback(args, words, pea_cli):
    result = pea_cli(*args)
    assert result.code == 2
    assert "Traceback" not in result.err
    assert result.err.startswith("error: ")
    for w in words:
        assert w in result.err


def test_bad_input_is_one_line_in_a_real_process_too():
    proc = _pea("train-language", "--lang", "xx")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown language 'xx'")
    assert "Traceback" not in proc.stderr


def test_unreachable_mlflow_from_the_environment_fails_clearly(pea_cli):
    result = pea_cli("profile", "--check", env={"PEA_MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert result.code == 2 and "Traceback" not in result.err
    assert "unreachable" in result.err


@pytest.mark.parametrize("args, work", [
    (["train", "--lang", "ko"], "pea.train.run.train_adapter"),
    (["train-language", "--lang", "ko"], "flows.pea_flow.pea"),
    (["harvest", "--lang", "ko", "--source-kind", "folder", "--source-uri", "x", "--distributor", "ray"],
     "pea.stages.harvest_stage"),
], ids=["train", "train-language", "harvest"])
def test_every_command_that_may_start_ray_runs_its_workers_in_this_environment(args, work, pea_cli, monkeypatch,
                                                                                 tmp_path):
    """Ray's `uv run` hook, on by default, would build a virtualenv of the current directory in every worker, and
    fails outside the project directory (`uv run --project <pea> pea train ...` from elsewhere)."""
    monkeypatch.delenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", raising=False)
    seen = {}

    def stand_in(*args, **kwargs):
        seen.update(os.environ)
        raise PeaError("stopped where the work starts", "-")

    monkeypatch.setattr(work, stand_in)
    result = pea_cli(*args, cwd=tmp_path)
    assert result.code == 2 and "stopped where the work starts" in result.err, result.err
    assert seen["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] == "0"


@pytest.mark.parametrize("layer, forbidden", [("pea", {"prefect", "flows", "tasks"}), ("tasks", {"flows"})])
def test_data_flows_one_way_flows_tasks_pea(layer, forbidden):
    """pea/ is the library (no Prefect, no tasks or flows); tasks/ wrap pea/ and never reach the flows."""
    for path in (ROOT / layer).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] in forbidden for n in names), f"{path} imports {names}"


@pytest.mark.slow
@pytest.mark.integration
def test_the_main_job_shows_its_stages_and_where_to_look_and_nothing_alarming(tmp_path):
    """`pea train-language` as a new user runs it (Prefect's temporary server on a fresh database, a local Ray,
    MLflow on SQLite): a line per stage update, no traceback or error from any library, and at the end the
    version and the gate's decision, the report and how to open the MLflow UI."""
    from flows.pea_flow import STAGES

    (tmp_path / "run.yaml").write_text(yaml.safe_dump(SMALL))
    data = tmp_path / "data"
    env = os.environ | {"PEA_DATA_DIR": str(data), "PREFECT_HOME": str(tmp_path / "prefect")}
    code = "import sys; from flows.cli import main; sys.argv = ['pea', *sys.argv[1:]]; main()"
    proc = subprocess.run([sys.executable, "-c", code, "train-language", "--lang", "ko", "--config", str(tmp_path / "run.yaml")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env, timeout=1200)
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:]
    assert "Traceback" not in out and "ERROR" not in out, out
    for index, name in enumerate(STAGES, 1):
        assert f"stage {index}/{len(STAGES)} {name}  done in " in out, out
    champion, report, ui = out.splitlines()[-3:]
    assert champion.startswith("pea-ko version 1 (pea-ko-tiny-sdxl-") and champion.endswith(" is champion: no champion yet")
    assert report.startswith(f"report: {data}/storage/ko/eval/") and Path(report.removeprefix("report: ")).is_file()
    assert ui == f"MLflow UI: uv run mlflow ui --backend-store-uri sqlite:///{data}/mlflow.db --host 127.0.0.1"


@pytest.mark.slow
@pytest.mark.integration
def test_a_failing_run_says_what_failed_in_one_line_and_debug_shows_everything(tmp_path):
    """A stage that fails on bad input (the first: a source folder that does not exist) ends the run with the
    stage it reached and the CLI's problem and fix; Prefect's own report of the failure (a traceback per flow
    it passed through) is shown with --debug only."""
    gone = tmp_path / "gone"
    sources = [{"name": "gone", "kind": "folder", "uri": str(gone)}]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"preset": "tiny-sdxl", "data": {"sources": sources}}))
    env = os.environ | {"PEA_DATA_DIR": str(tmp_path / "data"), "PREFECT_HOME": str(tmp_path / "prefect")}
    args = ["train-language", "--lang", "ko", "--config", str(tmp_path / "run.yaml")]
    quiet = _pea(*args, env=env, timeout=600)
    assert quiet.returncode == 2 and quiet.stdout == "", quiet.stdout + quiet.stderr
    stage, *rest = quiet.stderr.splitlines()
    assert stage.startswith("stage 1/7 harvest  elapsed "), quiet.stderr
    assert rest == [f"error: source folder {gone} does not exist",
                    "  fix: give --source-uri an existing folder of images"], quiet.stderr
    debug = _pea("--debug", *args, env=env, timeout=600)
    assert debug.returncode == 1 and "| ERROR   | Flow run " in debug.stderr and "Traceback" in debug.stderr
