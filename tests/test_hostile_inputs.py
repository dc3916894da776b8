"""Hostile and careless input (issue #16): names that climb out of the storage root, passwords in URIs, blank
prompts, tar folder entries, malformed environment variables, adapter configs that would allocate without
bound and images or tar members too large to hold. Each case is refused (or handled) in one line,
with a non-zero exit code on the CLI, no traceback and nothing written where it does not belong."""

import io
import json
import resource
import struct
import tarfile
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from pea.adapter import CONFIG, AdapterConfig, PEAAdapter, load_adapter
from pea.data.buckets import BucketConfig
from pea.data.harvest import harvest
from pea.data.shards import bucket
from pea.data.sources import SourceSpec
from pea.data.tars import MAX_MEMBER_BYTES, iter_samples
from pea.data.translate import translate
from pea.errors import PeaError, redact
from pea.names import NAME_PATTERN
from pea.profiles import load_profile
from pea.run_config import build_run_config
from pea.storage import Storage

SECRET = "s3cret"
CLIMBS = ["../../x", "../../../x", "a/../../b", ".hidden", "a..b", "x" * 101]


def _files(root: Path) -> set[Path]:
    """Everything under root but the stages' lock files (pea.locks), which stay once taken and are no output,
    and the folders made only to hold them."""
    paths = set(root.rglob("*"))
    locks = {p for p in paths if ".locks" in p.parts}
    holders = {folder for p in locks for folder in p.parents}
    return {p for p in paths - locks if p not in holders or any(q not in locks | holders for q in p.rglob("*"))}


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
    # the source name, the run name, the compression recipe and unet_from (a compression run's name)
    assert config_schema.count(NAME_PATTERN) == 4


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


def test_the_training_job_ray_keeps_and_shows_holds_no_tracking_uri():
    """Ray shows a run's train_loop_config on its dashboard: the URI rides in the worker callable instead."""
    from pea.train.config import TrainJob
    from pea.train.loop import WorkerLoop

    assert not [name for name in TrainJob.model_fields if "tracking" in name or "uri" in name]
    assert SECRET not in repr(WorkerLoop(f"http://user:{SECRET}@host"))


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


@pytest.mark.parametrize("stage, words", [("translate", ["no harvested data", "pea harvest"]),
                                          ("bucket", ["no caption tables", "pea translate"]),
                                          ("cache", ["no bucketed shards", "pea bucket"])])
def test_a_stage_on_empty_storage_names_the_stage_to_run_first(stage, words, tmp_path, pea_cli):
    result = pea_cli(stage, "--lang", "ko", "--preset", "tiny-sdxl", env=_env(tmp_path), cwd=tmp_path)
    _one_line_error(result, words[0])
    assert words[1] in result.err
    assert not list((tmp_path / "pea" / "root").rglob("manifest.json"))  # no stage looks done


def test_bucketing_that_keeps_nothing_says_why_and_leaves_no_manifest(tmp_path):
    storage = Storage(str(tmp_path / "root"))
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    (folder / "a.txt").write_text("빨간 원", encoding="utf-8")
    (folder / "a.en.txt").write_text("a red circle", encoding="utf-8")
    harvest(storage, "ko", SourceSpec(name="b", kind="folder", uri=str(folder)))
    translate(storage, "ko", "kor_Hang", "none", lambda: None)
    with pytest.raises(PeaError, match=r"bucketing kept no sample of 'ko' \(dropped: \{'broken': 1"):
        bucket(storage, "ko", BucketConfig(side=32, step=16))
    assert not storage.exists("ko", "shards", "manifest.json")


@pytest.mark.parametrize("variable", ["PEA_NAME__X", "PEA_STORAGE_ROOT__DEEP__ER"])
def test_a_nested_variable_under_a_plain_field_names_the_variable(variable, tmp_path, pea_cli):
    with pytest.raises(PeaError, match=variable):
        load_profile("local", env={variable: "1"}, cwd=tmp_path)
    _one_line_error(pea_cli("profile", env=_env(tmp_path) | {variable: "1"}, cwd=tmp_path), variable)


# 4. adapter configs that decide what is allocated


def _saved_adapter(folder: Path, **changes) -> Path:
    """An adapter that fits tiny-sdxl for ko (64 -> 32 -> 32-d pooled tokens -> 64-d context), with `changes`."""
    cfg = AdapterConfig(input_dim=64, context_dim=64, pooled_dim=32, hidden_dims=(32,), language="ko",
                        student_encoder="tiny-byt5")
    return PEAAdapter(cfg.model_copy(update=changes)).save(folder)


def _edit_config(folder: Path, **changes) -> Path:
    """`folder` with only its adapter.json changed, so that it no longer describes the weights."""
    (folder / CONFIG).write_text(json.dumps(json.loads((folder / CONFIG).read_text()) | changes))
    return folder


@pytest.mark.parametrize("width", [10**12, 4_000_000])
def test_an_absurd_adapter_width_is_refused_before_anything_is_allocated(width, tmp_path):
    """[10**12] used to crash the allocator; [4000000] built 64 -> 4e6 -> 32 Linears (~1.5 GB) before the
    weights were compared with them."""
    folder = _edit_config(_saved_adapter(tmp_path / "a"), hidden_dims=[width])
    peak_kib, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    with pytest.raises(PeaError) as e:
        load_adapter(folder)
    assert time.monotonic() - start < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kib < 100 * 1024
    assert "hidden_dims.0" in e.value.problem and "65536" in e.value.problem and "\n" not in str(e.value)


@pytest.mark.parametrize("changes, words", [
    ({"hidden_dims": [48]}, "mlp.1.weight is [32, 64] in the weights, [48, 64] by the config"),
    ({"pooled_dim": None}, "context_head.1.bias is [64] in the weights, absent by the config"),
], ids=["wider", "no-pooled-head"])
def test_adapter_weights_that_do_not_match_their_config_are_refused_naming_the_first_key(changes, words, tmp_path):
    folder = _edit_config(_saved_adapter(tmp_path / "a"), **changes)
    with pytest.raises(PeaError) as e:
        load_adapter(folder)
    assert words in e.value.problem and "\n" not in str(e.value)


@pytest.mark.parametrize("changes, edit, words", [
    ({"context_dim": 32, "pooled_dim": None}, {}, "context width is 32, but this model needs 64"),
    ({"input_dim": 48}, {}, "input width is 48, but this model needs 64"),
    ({}, {"hidden_dims": [10**12]}, "hidden_dims.0"),
], ids=["sd15-adapter", "other-student", "absurd-width"])
def test_generate_refuses_an_adapter_that_does_not_fit_before_loading_a_model(changes, edit, words, tmp_path,
                                                                              pea_cli, monkeypatch):
    """The preset's widths are checked from adapter.json: a real base model takes ~30 s to load first."""
    def load_pipeline(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("pea.inference.load_pipeline", load_pipeline)
    folder = _edit_config(_saved_adapter(tmp_path / "a", **changes), **edit)
    result = pea_cli("generate", "빨간 원", "--lang", "ko", "--adapter", str(folder), "--preset", "tiny-sdxl",
                     "--out", str(tmp_path / "out.png"), env=_env(tmp_path), cwd=tmp_path)
    _one_line_error(result, words)
    assert not (tmp_path / "out.png").exists()


# 5. images and tar members too large to hold


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 RGBA PNG whose header (IHDR) claims width x height: what Image.open reports without decoding."""
    buf = io.BytesIO()
    Image.new("RGBA", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")  # then width, height, 5 more bytes, and the CRC of type + data
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(data[ihdr : ihdr + 17]))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [13300, 20000], ids=["under-PILs-limit", "over-PILs-limit"])
def test_a_decompression_bomb_is_counted_too_large_and_never_decoded(side, image_folder, tmp_path, monkeypatch):
    """13300^2 RGBA (714 KB as a real PNG) is just under what PIL refuses and would take ~1.2 GB decoded."""
    (image_folder / "bomb.png").write_bytes(_png_claiming(side, side))
    for name in ("a", "bomb"):
        (image_folder / f"{name}.txt").write_text("빨간 원", encoding="utf-8")
        (image_folder / f"{name}.en.txt").write_text("a red circle", encoding="utf-8")
    storage = Storage(str(tmp_path / "root"))
    harvest(storage, "ko", SourceSpec(name="f", kind="folder", uri=str(image_folder)))
    translate(storage, "ko", "kor_Hang", "none", lambda: pytest.fail("every caption has both sides"))
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decoded.append(im.size) or load(im))
    manifest = bucket(storage, "ko", BucketConfig(side=32, step=8))
    assert manifest["dropped"] == {"broken": 0, "too_large": 1, "tiny": 0, "no_caption": 0}
    assert manifest["samples"] == 1 and set(decoded) == {(64, 64)}  # the real image only


def test_an_oversized_tar_member_is_refused_before_it_is_read(tmp_path, pea_cli):
    """The member's header alone says its size; the file is sparse, so the test holds no 64 MiB itself."""
    info = tarfile.TarInfo("big/0001.jpg")
    info.size = MAX_MEMBER_BYTES + 1
    with open(tmp_path / "s.tar", "wb") as f:
        f.write(info.tobuf())
        f.truncate(512 + MAX_MEMBER_BYTES + 512 + 1024)  # the data padded to 512-byte blocks, then the end blocks
    before = _files(tmp_path)
    result = pea_cli("harvest", "--lang", "ko", "--source-kind", "webdataset", "--source-uri", str(tmp_path / "s.tar"),
                     "--source-name", "w", env=_env(tmp_path), cwd=tmp_path)
    _one_line_error(result, "s.tar: tar member 'big/0001.jpg' is 64 MiB, over the 64 MiB")
    assert _files(tmp_path) == before
