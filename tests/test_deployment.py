"""`prefect deployment run pea/train-language` for real: a Prefect server, the work pool, `prefect deploy
--all` from prefect.yaml and a process worker, all on 127.0.0.1 with a temporary PREFECT_HOME (the same
LocalStack that infra/local_stack.py starts for people)."""

import socket

import pytest

from infra.local_stack import LocalStack
from pea.profiles import load_profile
from pea.registry import CHAMPION, _client, version_by_alias

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SMALL = ["--param", "steps=10", "--param", "eval_prompts=2", "--param", "eval_steps=2", "--param", "toy_samples=120"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_deployment_runs_on_a_worker_twice_and_refuses_bad_parameters(tmp_path):
    data = tmp_path / "data"
    env = {"PEA_PRESET": "tiny-sdxl", "PEA_DATA_DIR": str(data)}
    with LocalStack(tmp_path / "prefect", _free_port(), mlflow_port=None, extra_env=env) as stack:
        deployments = stack.prefect("deployment", "ls").stdout
        assert "pea/train-language" in deployments and "pea/retrain-ko" in deployments

        def run(*params: str):
            return stack.prefect("deployment", "run", "pea/train-language", *params, "--watch", check=False, timeout=1200)

        first = run("--param", "lang=ko", *SMALL)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        profile = load_profile("local", env=env)
        storage, uri = profile.storage(), profile.mlflow_tracking_uri
        assert storage.read_json("ko", "shards", "manifest.json")["samples"] == 120
        assert storage.glob("ko", "train", "*", "checkpoint_*")
        assert str(version_by_alias(uri, "ko", CHAMPION).version) == "1"

        second = run("--param", "lang=ko", *SMALL)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        version = _client(uri).get_model_version("pea-ko", "2")
        assert version.tags["pea.gate.decision"] in ("promoted", "kept champion")

        for params, words in ((["--param", "lang=xx"], ["'ko'", "'zh'"]),
                              (["--param", "lang=ko", "--param", "steps=-1"], ["steps", "0"])):
            bad = stack.prefect("deployment", "run", "pea/train-language", *params, check=False)
            said = bad.stdout + bad.stderr
            assert bad.returncode != 0 and all(w in said for w in words), said[-2000:]
        assert len(_client(uri).search_model_versions("name = 'pea-ko'")) == 2
