"""The data stages on Ray Data (pea.data.parallel) as a cluster runs them: a local Ray on 127.0.0.1 whose workers
open the storage themselves, here a moto S3 server on 127.0.0.1. What they write must be what the same units
write in one process, byte for byte, and a run killed half-way must resume to the same result."""

import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load as load_tensors
import test_data
from data_helpers import make_folder

from pea.cluster import connect
from pea.data.cache import cache_features
from pea.data.harvest import harvest
from pea.data.index import indexed_shards
from pea.data.parallel import RayData
from pea.data.shards import bucket
from pea.data.sources import SourceSpec
from pea.data.tars import iter_samples
from pea.data.translate import translate
from pea.languages import get_language
from pea.layout import features_dir, shards_dir
from pea.presets import get_preset
from pea.profiles import load_profile
from pea.stages import FrozenEncoders
from pea.storage import Storage

s3_root = test_data.s3_root  # the suite's S3 server on 127.0.0.1, stopped after each test
PARTS = 4


def _prepared(storage: Storage, folders) -> None:
    for i, folder in enumerate(folders):
        harvest(storage, "ko", SourceSpec(name=f"part{i}", kind="folder", uri=str(folder)))
    translate(storage, "ko", "kor_Hang", "none", lambda: None)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return [make_folder(root / f"i{i}", n=12, size=(96, 80)) for i in range(PARTS)]


@pytest.fixture
def ray_data(tmp_path):
    profile = load_profile("local", env={"PEA_DATA_DIR": str(tmp_path / "data"), "PEA_RAY__DATA_WORKERS": "2"},
                           cwd=tmp_path)
    connect(profile)
    return profile, RayData(lambda: connect(profile), workers=2)


def _both_roots(tmp_path, folders, s3_root) -> tuple[dict, list[dict], Storage]:
    """The bucket manifest one process makes on a local root and its index rows, and the same inputs prepared on
    the S3 root."""
    local = Storage(str(tmp_path / "local"))
    _prepared(local, folders)
    remote = Storage(*s3_root)
    _prepared(remote, folders)
    expected = bucket(local, "ko", test_data.SMALL)
    return expected, _rows(local, expected), remote


def _rows(storage: Storage, manifest: dict) -> list[dict]:
    return indexed_shards(storage, shards_dir("ko"), manifest)


def _keys(storage: Storage, manifest: dict) -> list[str]:
    keys = []
    for s in _rows(storage, manifest):
        with storage.open(*shards_dir("ko"), *s["path"].split("/")) as f:
            keys += [sample["__key__"] for sample in iter_samples(f, s["path"])]
    return keys


@pytest.mark.integration
def test_ray_data_workers_write_what_one_process_writes(tmp_path, folders, s3_root, ray_data, model_cache):
    profile, mapper = ray_data
    expected, rows, remote = _both_roots(tmp_path, folders, s3_root)
    lines = []
    got = bucket(remote, "ko", test_data.SMALL, progress=lambda line, f=None: lines.append(f), mapper=mapper)
    assert got == expected and _rows(remote, got) == rows  # the index too, byte for byte (its sha256)
    assert sorted(lines) == [i / PARTS for i in range(1, PARTS + 1)]  # a progress line per input, as they finish

    tiny = get_preset("tiny-sdxl")
    load = FrozenEncoders(model_cache, get_language("ko"), tiny, text=False, batch_size=8)
    features = cache_features(remote, "ko", tiny.name, load, mapper=mapper)
    cached = indexed_shards(remote, features_dir("ko", tiny.name), features)
    assert [s["path"] for s in cached] == [f"{features['key']}/{s['path']}" for s in rows]
    assert all(remote.exists(*features_dir("ko", tiny.name), *s["path"].split("/")) for s in cached)
    with remote.open(*features_dir("ko", tiny.name), *cached[0]["path"].split("/")) as f:
        sample = next(iter_samples(f, "features"))
    assert set(load_tensors(sample["safetensors"])) == {"latent_mean", "latent_std"}  # no text: encoded in training


KILLED = """
import sys, time
from pea.cluster import connect
from pea.data.parallel import RayData
from pea.data.shards import bucket
from pea.profiles import load_profile
from pea.storage import Storage
import test_data

class Slow:  # each input takes a second more: the test kills the run between two of them
    def __init__(self, make):
        self.make = make

    def __call__(self):
        unit = self.make()
        return lambda item: time.sleep(1) or unit(item)

root, endpoint, data = sys.argv[1:4]
profile = load_profile("local", env={"PEA_DATA_DIR": data}, cwd=data)
ray_data = RayData(lambda: connect(profile), workers=1)
bucket(Storage(root, endpoint), "ko", test_data.SMALL, mapper=lambda make, items: ray_data(Slow(make), items))
"""


@pytest.mark.integration
def test_a_killed_ray_data_run_resumes_with_nothing_lost_or_duplicated(tmp_path, folders, s3_root, ray_data):
    mapper = ray_data[1]
    expected, rows, storage = _both_roots(tmp_path, folders, s3_root)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    # its own session: the kill takes the run's driver and the Ray it started, as a lost node would
    run = subprocess.Popen([sys.executable, "-c", KILLED, *s3_root, str(tmp_path / "killed")], env=env,
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not storage.glob(*shards_dir("ko"), "*", "_done", "*.json") and time.monotonic() < deadline:
            assert run.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    done = len(storage.glob(*shards_dir("ko"), "*", "_done", "*.json"))
    assert 1 <= done < PARTS and not storage.exists(*shards_dir("ko"), "manifest.json")
    resumed = bucket(storage, "ko", test_data.SMALL, mapper=mapper)
    assert _rows(storage, resumed) == rows
    assert resumed == expected  # nothing lost: the same shards, byte for byte (digest), and the same index
    keys = _keys(storage, resumed)
    assert len(keys) == len(set(keys)) == expected["samples"]  # nothing twice
