"""The Grafana training dashboard's series, and a scrape of Ray's Prometheus export on 127.0.0.1 while a test
trains (tests/test_train.py scrapes during its reference run, so no test trains just to be scraped)."""

import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboards" / "training.json"


def dashboard_series() -> set[str]:
    """Every `ray_pea_train_*` series the dashboard queries."""
    return set(re.findall(r"ray_pea_train_\w+", DASHBOARD.read_text()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _series(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("ray_pea_train_")}


@contextmanager
def scraped(port: int, wanted: set[str], linger_s: float = 60) -> Iterator[set[str]]:
    """Scrape http://127.0.0.1:<port>/metrics every 0.5 s while the block runs, and after it until every
    `wanted` series was seen or `linger_s` passed. Yields the set of `ray_pea_train_*` series seen so far."""
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
    thread.start()
    try:
        yield seen
        deadline = time.monotonic() + linger_s
        while not wanted <= seen and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        done.set()
        thread.join(timeout=10)
