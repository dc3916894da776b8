"""Filesystem errors (issue #16 item 6): a read-only storage root, a full disk or an unwritable `--out` is one
`error:` line naming the path and the OS's reason, with a fix; no temporary file is left behind, and
`pea generate` refuses its `--out` before any model loads.

Where the test runs as root and may mount, the read-only folder and the full disk are real tmpfs mounts; a
user who is not root gets a chmod-ed folder (real too) and a simulated full disk; root in a container that may
not mount gets both simulated, by patching `open`, `os.open`, `os.mkdir` and renames for paths under the folder only."""

import builtins
import errno
import io
import os
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pea import generate
from pea.adapter import AdapterConfig, PEAAdapter
from pea.data.harvest import harvest
from pea.data.sources import SourceSpec
from pea.errors import PeaError
from pea.languages import get_language
from pea.presets import get_preset
from pea.storage import Storage
from pea.train.checkpoint import TrainState, save_checkpoint

SECRET = "s3cret"
ROOM = 64 << 10  # the full disk's free space
BIG = 1 << 20


# folders that refuse writes

def _mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a tmpfs at `folder`: only root can, and only where the container lets it."""
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, check=False).returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=True)


def _under(path, folder: Path) -> bool:
    try:
        return Path(os.fsdecode(path)).absolute().is_relative_to(folder)
    except TypeError:  # a file descriptor
        return False


def _os_error(code: int, path) -> OSError:
    return OSError(code, os.strerror(code), os.fsdecode(path))


class _FullFile(io.FileIO):
    """A file on a disk with ROOM bytes free: a larger write fills it, then fails."""

    def write(self, data) -> int:
        if len(data) <= ROOM:
            return super().write(data)
        super().write(bytes(data[:ROOM]))
        raise _os_error(errno.ENOSPC, self.name)


def _simulate(monkeypatch, folder: Path, code: int) -> None:
    """Writes under `folder` fail as a read-only mount (EROFS: no file, folder or rename made) or a full disk
    (ENOSPC: a write larger than ROOM fills the file, then fails) would fail them; everything else goes through."""
    real_open, real_os_open, real_mkdir, real_rename = builtins.open, os.open, os.mkdir, os.rename

    def fake_open(file, mode="r", *args, **kwargs):
        if not (_under(file, folder) and set(mode) & set("wax+")):
            return real_open(file, mode, *args, **kwargs)
        if code == errno.ENOSPC:
            return _FullFile(file, mode.replace("t", ""))
        raise _os_error(code, file)

    def fake_os_open(path, flags, *args, **kwargs):
        if code == errno.EROFS and _under(path, folder) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise _os_error(code, path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if code == errno.EROFS and _under(path, folder):
            raise _os_error(code, path)
        return real_mkdir(path, *args, **kwargs)

    def fake_rename(src, dst, *args, **kwargs):
        if code == errno.EROFS and _under(dst, folder):
            raise _os_error(code, dst)
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "rename", fake_rename)
    monkeypatch.setattr(os, "replace", fake_rename)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder nothing can be written to: chmod 0o555 (root ignores it), else a read-only tmpfs."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    elif _mount_tmpfs(folder, "ro,size=1m"):
        yield folder
        _umount(folder)
    else:
        _simulate(monkeypatch, folder, errno.EROFS)
        yield folder


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A folder on a disk with 64 KiB of room."""
    folder = tmp_path / "full"
    folder.mkdir()
    if _mount_tmpfs(folder, f"size={ROOM}"):
        yield folder
        _umount(folder)
    else:
        _simulate(monkeypatch, folder, errno.ENOSPC)
        yield folder


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def _env(tmp_path: Path, root: Path) -> dict[str, str]:
    """A profile under tmp_path/pea whose storage root is `root`."""
    return {"PEA_DATA_DIR": str(tmp_path / "pea"), "PEA_STORAGE_ROOT": str(root),
            "PEA_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'pea' / 'mlflow.db'}"}


def _one_line_error(result, *words: str) -> list[str]:
    """Refused: exit code 2, no traceback, the `error:` line naming `words` (and at most its `fix:` line)."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) <= 2 and lines[0].startswith("error: "), result.err
    assert all(line.startswith("  fix: ") for line in lines[1:]), result.err
    for word in words:
        assert word in lines[0], result.err
    return lines


def _refused(line: str) -> bool:
    return "read-only file system" in line or "permission denied" in line


# the storage root

def test_a_read_only_storage_root_is_one_line_naming_it(read_only, image_folder, tmp_path, pea_cli):
    result = pea_cli("harvest", "--lang", "ko", "--source-kind", "folder", "--source-uri", str(image_folder),
                     env=_env(tmp_path, read_only), cwd=tmp_path)
    error, fix = _one_line_error(result, f"{read_only}/ko/")  # the stage's lock or its first shard
    assert error.startswith("error: cannot ") and _refused(error), error
    assert "PEA_STORAGE_ROOT" in fix and f"make {read_only}" in fix
    assert _files(read_only) == set()


@pytest.mark.parametrize("old", [None, b"old"], ids=["new-file", "overwrite"])
def test_a_write_that_fills_the_disk_keeps_the_old_file(old, full_disk):
    """Half a file never replaces a whole one: the target is absent, or still holds what it held."""
    storage = Storage(str(full_disk))
    if old is not None:
        storage.write_bytes(old, "a", "x.bin")
    with pytest.raises(PeaError, match="no space left on device") as caught:
        storage.write_bytes(os.urandom(BIG), "a", "x.bin")
    assert str(full_disk / "a" / "x.bin") in caught.value.problem
    if old is None:
        assert not storage.exists("a", "x.bin")
    else:
        assert storage.read_bytes("a", "x.bin") == old
    assert not list(full_disk.rglob("*.tmp"))


def test_storage_makedirs_and_put_file_name_the_path(read_only, tmp_path):
    storage = Storage(str(read_only))
    with pytest.raises(PeaError, match=f"cannot create folder {read_only}/a/b: ") as caught:
        storage.makedirs("a", "b")
    assert _refused(caught.value.problem)
    local = tmp_path / "local.bin"
    local.write_bytes(b"data")
    with pytest.raises(PeaError, match=f"cannot write {read_only}/x.bin: "):
        storage.put_file(str(local), "x.bin")
    assert local.read_bytes() == b"data"  # not consumed by a move that failed
    assert _files(read_only) == set()


# files written outside the storage root

def test_an_adapter_saved_to_a_full_disk_is_a_pea_error(full_disk):
    """safetensors' own writer would report a full disk as a SafetensorError, and leave half a file."""
    adapter = PEAAdapter(AdapterConfig(input_dim=16, context_dim=8, pooled_dim=8, language="ko"))  # ~4 MB
    with pytest.raises(PeaError, match="no space left on device") as caught:
        adapter.save(full_disk / "adapter")
    assert str(full_disk / "adapter") in caught.value.problem
    assert not [p for p in _files(full_disk) if p.is_file()]


def test_a_checkpoint_saved_to_a_full_disk_points_at_tmpdir(full_disk):
    """Checkpoints go to a temporary folder first (pea.train.loop): TMPDIR is what moves them. The adapter is
    tiny and the run config large, so that it is the checkpoint's own write that fills the disk."""
    adapter = PEAAdapter(AdapterConfig(input_dim=4, context_dim=4, hidden_dims=(4,), language="ko"))
    stateless = SimpleNamespace(state_dict=dict)  # save_checkpoint reads only the optimizer's and schedule's
    with pytest.raises(PeaError, match="no space left on device") as caught:
        save_checkpoint(full_disk / "step-1", adapter, stateless, stateless, TrainState(),
                        [torch.Generator().get_state()], {"notes": "x" * BIG})
    assert str(full_disk / "step-1") in caught.value.problem and "TMPDIR" in caught.value.fix
    assert not list(full_disk.rglob("*.tmp"))


# pea generate --out

@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """An adapter that fits tiny-sdxl: without the --out check, generate would go on to load the model."""
    preset = get_preset("tiny-sdxl")
    spec = preset.student_for(get_language("ko"))
    cfg = AdapterConfig(input_dim=spec.hidden_size, context_dim=preset.context_dim, pooled_dim=preset.pooled_dim,
                        language="ko", student_encoder=spec.id)
    return PEAAdapter(cfg).save(tmp_path_factory.mktemp("adapter"))


@pytest.mark.parametrize("where", ["read-only", "read-only/sub", "file-in-the-way"])
def test_generate_refuses_an_unwritable_out_before_any_model_loads(where, read_only, adapter_dir, tmp_path,
                                                                   monkeypatch, pea_cli):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr("pea.inference.load_pipeline", no_model)
    (tmp_path / "file-in-the-way").write_text("not a folder")
    out = tmp_path / where / "x.png"
    start = time.monotonic()
    result = pea_cli("generate", "빨간 원", "--lang", "ko", "--adapter", str(adapter_dir), "--out", str(out),
                     "--preset", "tiny-sdxl", env=_env(tmp_path, tmp_path / "root"), cwd=tmp_path)
    error, fix = _one_line_error(result, f"cannot write {out}: ")
    assert time.monotonic() - start < 5
    assert "--out" in fix
    assert _refused(error) if where.startswith("read-only") else "not a directory" in error
    assert not out.exists() and not list(tmp_path.rglob("*.probe"))


def test_an_out_whose_folders_can_be_created_passes_and_creates_nothing(tmp_path):
    before = _files(tmp_path)
    generate.check_out(tmp_path / "new" / "sub" / "x.png")
    assert _files(tmp_path) == before


# the CLI's safety net

def test_an_oserror_no_stage_caught_is_one_line_without_its_password(monkeypatch, tmp_path, pea_cli):
    path = f"s3://user:{SECRET}@127.0.0.1:9/bucket/ko/adapter"

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr("pea.registry.resolve_adapter", refused)
    args = ("generate", "빨간 원", "--lang", "ko", "--adapter", str(tmp_path / "adapter"), "--preset", "tiny-sdxl")
    result = pea_cli(*args, env=_env(tmp_path, tmp_path / "root"), cwd=tmp_path)
    lines = _one_line_error(result, "s3://user:***@127.0.0.1:9/bucket/ko/adapter: Permission denied")
    assert len(lines) == 1
    assert SECRET not in result.err
    with pytest.raises(PermissionError):  # --debug: the traceback
        pea_cli("--debug", *args, env=_env(tmp_path, tmp_path / "root"), cwd=tmp_path)


def test_a_harvest_whose_staging_disk_fills_names_the_file_and_tmpdir(full_disk, tmp_path, monkeypatch):
    """Imports stream each shard into a local temporary file (TMPDIR) before it is put under the root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(4):
            data = os.urandom(ROOM // 2)  # the shard outgrows the 64 KiB disk
            info = tarfile.TarInfo(f"{i:04d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    monkeypatch.setattr(tempfile, "tempdir", str(full_disk))
    storage = Storage(str(tmp_path / "root"))
    with pytest.raises(PeaError) as caught:
        harvest(storage, "ko", SourceSpec(name="w", kind="webdataset", uri=str(tmp_path / "s.tar")))
    assert str(full_disk) in caught.value.problem and "no space left on device" in caught.value.problem
    assert "TMPDIR" in caught.value.fix
    assert not list(full_disk.rglob("*")) and not storage.exists("ko", "raw", "w", "manifest.json")
