"""Two runs on one language at once: the (language, stage) lock in the storage root (pea/locks.py).

The holder is a real process (a lock held in this process would prove nothing about other processes), killed
with SIGKILL as a crashed run is: locally the kernel frees its lock at once, on S3 its lease runs out."""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from threading import Barrier, Event

import pytest
import test_data
from data_helpers import make_folder

from pea import locks
from pea.data import shards
from pea.data.harvest import harvest
from pea.data.sources import SourceSpec
from pea.data.translate import translate
from pea.errors import PeaError
from pea.languages import get_language
from pea.layout import lock_dir
from pea.locks import stage_lock
from pea.presets import get_preset
from pea.profiles import Profile
from pea import stages
from pea.data.parallel import in_process
from pea.stages import bucket_stage
from pea.storage import Storage

s3_root = test_data.s3_root  # the suite's S3 server on 127.0.0.1, stopped after each test
LEASE_S = 3  # S3 dates are whole seconds: a lease of a few beats (LEASE_S / 4 apart) and a margin


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """A waiting run tries again every 0.2 s instead of every POLL_S, so that the tests wait no longer than needed."""
    monkeypatch.setattr(locks, "POLL_S", 0.2)

HOLDER = """
import sys, time
from pea.locks import stage_lock
from pea.storage import Storage

root, endpoint, lease = sys.argv[1], sys.argv[2] or None, float(sys.argv[3])
with stage_lock(Storage(root, endpoint_url=endpoint), "ko", "bucket", lease_s=lease):
    print("held", flush=True)
    time.sleep(120)
"""


@contextmanager
def holder(tmp_path: Path, root: str, endpoint: str = "", lease_s: float = 120):
    """Another process that holds the ko bucket lock until it is killed."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), root, endpoint, str(lease_s)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parent.parent)
    try:
        assert proc.stdout.readline() == "held\n", "the holder did not take the lock"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def refused(storage: Storage, **options) -> str:
    with pytest.raises(PeaError) as e:
        with stage_lock(storage, "ko", "bucket", **options):
            pytest.fail("the lock was taken while another process held it")
    return str(e.value)


def test_a_local_lock_names_its_holder_and_is_freed_when_the_holder_is_killed(tmp_path):
    root = str(tmp_path / "root")
    storage = Storage(root)
    with holder(tmp_path, root) as proc:
        message = refused(storage, wait_s=0)
        assert "\n" not in message
        assert message.startswith(f"the ko bucket stage is locked by pid {proc.pid} on {socket.gethostname()} (holder.py")
        assert f"kill {proc.pid} on {socket.gethostname()}" in message.split(" -- ")[1]
        said, start = [], time.monotonic()
        message = refused(storage, wait_s=1, progress=lambda line, fraction=None: said.append(line))
        assert time.monotonic() - start >= 1 and "(waited " in message
        assert said[0].startswith(f"waiting for the ko bucket stage: locked by pid {proc.pid}")
        proc.kill()
        proc.wait()
        with stage_lock(storage, "ko", "bucket", wait_s=0):  # the kernel freed it with its holder
            assert json.loads(storage.read_bytes(*lock_dir("ko", "bucket.json")))["pid"] == os.getpid()
    with stage_lock(storage, "ko", "bucket", wait_s=0):  # and this process released it
        pass


def test_an_s3_lock_is_kept_by_its_heartbeat_and_taken_over_once_its_holder_is_killed(tmp_path, s3_root, caplog):
    import fsspec

    root, endpoint = s3_root
    storage = Storage(root, endpoint_url=endpoint)
    try:
        with holder(tmp_path, root, endpoint, lease_s=LEASE_S) as proc:
            message = refused(storage, wait_s=0, lease_s=LEASE_S)
            assert "\n" not in message and f"locked by pid {proc.pid} on {socket.gethostname()}" in message
            assert f"delete {root}/ko/.locks/bucket.json" in message
            time.sleep(LEASE_S + 0.5)  # past the lease: the holder's heartbeat keeps the lock
            assert f"pid {proc.pid}" in refused(storage, wait_s=0, lease_s=LEASE_S)
            proc.kill()
            proc.wait()
            said = []
            with caplog.at_level(logging.WARNING, "pea.locks"):
                with stage_lock(storage, "ko", "bucket", wait_s=20, lease_s=LEASE_S, progress=lambda m, f=None: said.append(m)):
                    assert json.loads(storage.read_bytes(*lock_dir("ko", "bucket.json")))["pid"] == os.getpid()
            assert said and f"pid {proc.pid}" in said[0]  # it waited for the lease to run out
            assert f"took over the stale lock {root}/ko/.locks/bucket.json of pid {proc.pid}" in caplog.text
        assert not storage.exists(*lock_dir("ko", "bucket.json"))  # released
    finally:
        fsspec.config.conf.pop("s3", None)


def test_two_bucket_runs_at_once_bucket_each_input_once(tmp_path, monkeypatch):
    profile = Profile(name="test", data_dir=tmp_path, storage_root=str(tmp_path / "root"), mlflow_tracking_uri="-")
    storage = profile.storage()
    for i in range(2):
        harvest(storage, "ko", SourceSpec(name=f"part{i}", kind="folder", uri=str(make_folder(tmp_path / f"i{i}", n=4))))
    translate(storage, "ko", "kor_Hang", "fake-mt", lambda: lambda texts, src, tgt: [f"[{tgt}] {t}" for t in texts])
    bucketed, bucket_one, waiting = [], shards._bucket_one, Event()

    def slow_bucket_one(*args):
        bucketed.append(args[5:7])  # (source, stem)
        waiting.wait(timeout=3)  # the run at work goes on once the other has said it waits (or after 3 s)
        return bucket_one(*args)

    monkeypatch.setattr(shards, "_bucket_one", slow_bucket_one)
    monkeypatch.setattr(stages, "data_workers", lambda *a, **kw: in_process)  # units in this process, as patched
    start, said = Barrier(2), {0: [], 1: []}

    def run(i: int) -> dict:
        def progress(line: str, fraction=None) -> None:
            said[i].append(line)
            if line.startswith("waiting for the ko bucket stage"):
                waiting.set()

        start.wait()
        return bucket_stage(profile, get_language("ko"), get_preset("tiny-sdxl"), test_data.SMALL, progress)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(run, range(2))
    assert sorted(bucketed) == [("part0", "00000"), ("part1", "00000")]  # each input once, by one of the runs
    assert first == second  # the run that waited found the stage done
    waited = [lines for lines in said.values() if any(line.startswith("waiting for the ko bucket stage") for line in lines)]
    assert len(waited) == 1 and f"locked by pid {os.getpid()}" in waited[0][0]
