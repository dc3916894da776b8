"""Hostile and careless input (issue #16): names that climb out of the storage root, passwords in URIs, blank
prompts, tar folder entries and malformed environment variables. Each case is refused (or handled) in one line,
with a non-zero exit code on the CLI, no traceback and nothing written where it does not belong."""

import io
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from pea.data.harvest import harvest
from pea.data.sources import SourceSpec
from pea.data.tars import iter_samples
from pea.errors import PeaError, redact
from pea.names import NAME_PATTERN
from pea.profiles import load_profile
from pea.run_config import build_run_config
from pea.storage import Storage

SECRET = "s3cret"
CLIMBS = ["../../x", "../../../x", "a/../../b", ".hidden", "a..b", "x" * 101]


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _env(tmp_path: Path) -> dict[str, str]:
    """A profile whose every folder is under tmp_path/pea (storage root, data dir, MLflow)."""
    return {"PEA_DATA_DIR": str(tmp_path / "pea"), "PEA_STORAGE_ROOT": str(tmp_path / "pea" / "root"),
            "PEA_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'pea' / 'mlflow.db'}"}


def _one_line_error(result, *words: str) -> None:
    """Refused: exit code 2, the `error:` line (and its `fix:` line) only, naming `words`."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert lines[0].startswith("error: ") and all(line.startswith("  fix: ") for line in lines[1:2]), result.err
    assert len(lines) <= 2, result.err
    for word in words:
        assert word in lines[0], result.err


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "a.png")
    (folder / "a.txt").write_text("빨간 원", encoding="utf-8")
    return folder


# 1. names that become path segments


@pytest.mark.parametrize("name", CLIMBS)
def test_harvest_refuses_a_source_name_that_is_not_one_plain_folder(name, image_folder, tmp_path, pea_cli):
    before = _files(tmp_path)
    result = pea_cli("harvest", "--lang", "ko", "--source-kind", "folder", "--source-uri", str(image_folder),
                     "--source-name", name, env=_env(tmp_path), cwd=tmp_path)
    _one_line_error(result, f"source name {name!r} is not a valid name")
    assert _files(tmp_path) == before


def test_a_plain_source_name_is_harvested_under_its_own_folder(image_folder, tmp_path, pea_cli):
    """The case above with a good name: the same command does write, and only under its folder of the root."""
    before = _files(tmp_path)
    result = pea_cli("harvest", "--lang", "ko", "--source-kind", "folder", "--source-uri", str(image_folder),
                     "--source-name", "my-photos_2.v1", env=_env(tmp_path), cwd=tmp_path)
    assert result.code == 0, result.err
    raw = tmp_path / "pea" / "root" / "ko" / "raw" / "my-photos_2.v1"
    assert (raw / "manifest.json").is_file()
    assert all(p.is_relative_to(raw) or p in raw.parents for p in _files(tmp_path) - before)


@pytest.mark.parametrize("command", ["train", "evaluate", "register"])
def test_a_run_name_that_climbs_out_is_refused_before_anything_is_written(command, tmp_path, pea_cli):
    before = _files(tmp_path)
    result = pea_cli(command, "--lang", "ko", "--run-name", "../../x", env=_env(tmp_path), cwd=tmp_path)
    _one_line_error(result, "run name '../../x' is not a valid name")
    assert _files(tmp_path) == before


@pytest.mark.parametrize("fields", [
    {"data": {"sources": [{"name": "../../x", "kind": "folder", "uri": "/tmp"}]}},
    {"train": {"run_name": "../../x"}},
], ids=["sources", "run_name"])
def test_deployment_parameters_with_a_bad_name_are_refused_before_the_flow_runs(fields):
    """What Prefect runs on a flow run's parameters before the flow starts; the pattern is in the parameter
    schema too, so a server refuses the run before it is created."""
    from flows.pea_flow import pea

    with pytest.raises(PeaError, match=r"name '\.\./\.\./x' is not a valid name"):
        pea.validate_parameters({"lang": "ko", "config": fields})
    config_schema = str(pea.parameters.model_dump())
    assert config_schema.count(NAME_PATTERN) == 2  # the source name and the run name


def test_a_run_config_file_with_a_bad_source_name_is_one_line(tmp_path, pea_cli):
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  sources:\n  - {name: ../../x, kind: folder, uri: /tmp}\n", encoding="utf-8")
    _one_line_error(pea_cli("config", "--config", str(config)), "source name '../../x' is not a valid name")


def test_a_bad_name_from_python_is_a_pea_error_too():
    with pytest.raises(PeaError, match="source name '../x' is not a valid name"):
        SourceSpec(name="../x", kind="folder", uri="/tmp")
    with pytest.raises(PeaError, match="run name 'a/b' is not a valid name"):
        build_run_config(overrides={"train.run_name": "a/b"})


# 2. passwords in URIs


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://user:s3cret@db.local/mlflow", "postgresql://user:***@db.local/mlflow"),
    ("http://user:s3cret@host:5000", "http://user:***@host:5000"),
    ("https://user:p@s3cret@host/x?a=b@c", "https://user:***@host/x?a=b@c"),
    ("http://host:5000/a@b", "http://host:5000/a@b"),
    ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
])
def test_redact_hides_only_the_password(uri, shown):
    assert redact(f"server {uri} is down") == f"server {shown} is down"


def test_errors_never_carry_a_password():
    e = PeaError("no training run in http://user:s3cret@host", "check http://user:s3cret@host")
    assert SECRET not in str(e) and SECRET not in e.problem and SECRET not in e.fix


@pytest.mark.parametrize("uri, words", [
    ("http://user:s3cret@127.0.0.1:9", ["unreachable"]),
    ("postgresql://user:s3cret@127.0.0.1:9/db", ["unsupported MLflow tracking URI"]),
])
def test_pea_profile_never_prints_the_tracking_password(uri, words, tmp_path, pea_cli):
    result = pea_cli("profile", "--check", env=_env(tmp_path) | {"PEA_MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    _one_line_error(result, *words, "user:***@127.0.0.1:9")
    assert "user:***@127.0.0.1:9" in result.out  # the profile printed above the error
    assert SECRET not in result.out + result.err


def test_a_profile_sent_to_prefect_keeps_no_password_but_runs_with_it(tmp_path):
    from flows.pea_flow import harvest as harvest_flow

    prof = load_profile("local", env={"PEA_MLFLOW_TRACKING_URI": "http://user:s3cret@host"}, cwd=tmp_path)
    assert SECRET not in str(harvest_flow.serialize_parameters({"profile": prof}))  # what the Prefect API stores
    assert prof.mlflow_tracking_uri == "http://user:s3cret@host"


def test_the_leaderboard_page_shows_no_password(tmp_path):
    from pea.leaderboard import write_leaderboard

    page = write_leaderboard("http://user:s3cret@host", [], tmp_path / "board.html").read_text(encoding="utf-8")
    assert SECRET not in page and "user:***@host" in page


# 3. small things


@pytest.mark.parametrize("prompt", ["\x1b\x07\x7f", "\u200b\u200d", " \t\n", "\x00"])
def test_a_prompt_of_control_characters_only_is_refused(prompt, tmp_path, pea_cli):
    before = _files(tmp_path)
    result = pea_cli("generate", prompt, "--lang", "ko", "--adapter", str(tmp_path / "adapter"),
                     "--out", str(tmp_path / "out.png"), env=_env(tmp_path), cwd=tmp_path)
    _one_line_error(result, "empty prompt")
    assert _files(tmp_path) == before


def test_a_tar_folder_entry_is_skipped(tmp_path):
    """`tar -cf s.tar sub/` writes an entry for the folder before its files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder = tarfile.TarInfo("sub")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in (("sub/0001.txt", "빨간 원".encode()), ("sub/0001.jpg", b"jpeg")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    assert list(iter_samples(io.BytesIO(buf.getvalue()), "s.tar")) == [
        {"__key__": "sub/0001", "txt": "빨간 원".encode(), "jpg": b"jpeg"}]
    manifest = harvest(Storage(str(tmp_path / "root")), "ko", SourceSpec(name="w", kind="webdataset",
                                                                         uri=str(tmp_path / "s.tar")))
    assert manifest["counts"] == {"requested": 1, "success": 1}


@pytest.mark.parametrize("variable", ["PEA_NAME__X", "PEA_STORAGE_ROOT__DEEP__ER"])
def test_a_nested_variable_under_a_plain_field_names_the_variable(variable, tmp_path, pea_cli):
    with pytest.raises(PeaError, match=variable):
        load_profile("local", env={variable: "1"}, cwd=tmp_path)
    _one_line_error(pea_cli("profile", env=_env(tmp_path) | {variable: "1"}, cwd=tmp_path), variable)
