"""The local stack on 127.0.0.1: a Prefect server, the `pea-process` work pool with the deployments of
prefect.yaml and one worker, and the MLflow UI on the local profile's database. Ctrl-C stops all of it.

    uv run python infra/local_stack.py                  # Prefect UI :4200, MLflow UI :5000
    prefect deployment run pea/train-language --param lang=ko --watch     # in another shell, with
    export PREFECT_API_URL=http://127.0.0.1:4200/api                     # the URL it prints

The tests start the same class on free ports with a temporary PREFECT_HOME.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = "pea-process"


class LocalStack:
    def __init__(self, home: Path, prefect_port: int = 4200, mlflow_port: int | None = 5000,
                 mlflow_uri: str = "sqlite:///pea-data/mlflow.db", extra_env: dict[str, str] | None = None):
        self.home, self.prefect_port, self.mlflow_port, self.mlflow_uri = home, prefect_port, mlflow_port, mlflow_uri
        self.extra_env = extra_env or {}
        self.procs: list[subprocess.Popen] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    def env(self) -> dict[str, str]:
        # PWD: prefect.yaml's pull step runs flows in {{ $PWD }}, the checkout, wherever this was started from
        return {**os.environ, "PWD": str(ROOT), "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_ENABLED": "true", **self.extra_env}

    def _spawn(self, *args: str, log: str) -> subprocess.Popen:
        out = open(self.home / f"{log}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=self.env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def prefect(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=ROOT, env=self.env(),
                              capture_output=True, text=True, check=check, timeout=timeout)

    def _wait(self, url: str, proc: subprocess.Popen, what: str, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up at {url}; see {self.home}/*.log")
            time.sleep(1)

    def start(self) -> "LocalStack":
        self.home.mkdir(parents=True, exist_ok=True)
        server = self._spawn("prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.prefect_port),
                             log="prefect-server")
        self._wait(f"{self.api_url}/health", server, "the Prefect server")
        if POOL not in self.prefect("work-pool", "ls").stdout:
            self.prefect("work-pool", "create", POOL, "--type", "process")
        self.prefect("deploy", "--all")
        self._spawn("prefect", "worker", "start", "--pool", POOL, "--limit", "1", log="prefect-worker")
        if self.mlflow_port:
            ui = self._spawn("mlflow", "ui", "--backend-store-uri", self.mlflow_uri, "--host", "127.0.0.1",
                             "--port", str(self.mlflow_port), "--workers", "1", log="mlflow-ui")
            self._wait(f"http://127.0.0.1:{self.mlflow_port}/health", ui, "the MLflow UI")
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()

    def __enter__(self) -> "LocalStack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=ROOT / "pea-data" / "prefect", help="PREFECT_HOME")
    parser.add_argument("--prefect-port", type=int, default=4200)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    args = parser.parse_args()
    with LocalStack(args.home, args.prefect_port, args.mlflow_port) as stack:
        print(f"Prefect UI  http://127.0.0.1:{args.prefect_port}  (export PREFECT_API_URL={stack.api_url})")
        print(f"MLflow UI   http://127.0.0.1:{args.mlflow_port}")
        print(f"worker      pool {POOL}; logs under {args.home}. Ctrl-C stops everything.")
        try:
            while all(p.poll() is None for p in stack.procs):
                time.sleep(2)
            print("a service stopped; see its log", file=sys.stderr)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
