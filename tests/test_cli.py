import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
