"""The Grafana dashboard charts only what training exports: a short run on a local Ray whose metrics export
listens on 127.0.0.1 is scraped while it trains, and every series the dashboard queries must appear."""

import json
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from data_helpers import make_folder
from pea.data.sources import SourceSpec
from pea.data.translate import translate
from pea.languages import get_language
from pea.profiles import load_profile
from pea.stages import bucket_stage, cache_stage, harvest_stage
from pea.train.config import TrainConfig
from pea.train.run import train_adapter

pytestmark = [pytest.mark.slow, pytest.mark.integration]
DASHBOARD = Path(__file__).resolve().parents[1] / "dashboards" / "training.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _series(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("ray_pea_train_")}


def test_every_series_the_training_dashboard_queries_is_exported(tmp_path):
    import ray

    wanted = set(re.findall(r"ray_pea_train_\w+", DASHBOARD.read_text()))
    assert len(wanted) >= 6
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
             _metrics_export_port=port, _system_config={"metrics_report_interval_ms": 500})
    seen: set[str] = set()
    done = threading.Event()

    def scrape():
        while not done.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    seen.update(_series(r.read().decode()))
            except OSError:
                pass
            time.sleep(0.5)

    thread = threading.Thread(target=scrape, daemon=True)
    try:
        env = {"PEA_DATA_DIR": str(tmp_path / "data"), "PEA_PRESET": "tiny-sdxl"}
        profile = load_profile("local", env=env, cwd=tmp_path)
        ko = get_language("ko")
        harvest_stage(profile, ko, SourceSpec(name="local", kind="folder", uri=str(make_folder(tmp_path / "imgs", n=32))))
        translate(profile.storage(), "ko", "kor_Hang", "none", lambda: None)
        bucket_stage(profile, ko)
        cache_stage(profile, ko)
        thread.start()
        train_adapter(profile, ko, TrainConfig(steps=40, batch_size=4, log_every=5, checkpoint_every=10, progress="log"))
        deadline = time.monotonic() + 60
        while not wanted <= seen and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        done.set()
        ray.shutdown()
    assert wanted <= seen, f"not exported: {sorted(wanted - seen)}"
    assert json.loads(DASHBOARD.read_text())["templating"]["list"][1]["name"] == "lang"
