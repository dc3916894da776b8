"""`prefect deployment run pea/train-language` for real: a Prefect server, the work pool, `prefect deploy
--all` from prefect.yaml and a process worker, all on 127.0.0.1 with a temporary PREFECT_HOME (the same
LocalStack that infra/local_stack.py starts for people)."""

import json
import socket

import pytest
from gate_helpers import expected_decision

from infra.local_stack import LocalStack
from pea.profiles import load_profile
from pea.registry import CHAMPION, version_by_alias
from pea.tracking import client as registry_client
from pea.tracking import find_train_run

pytestmark = [pytest.mark.slow, pytest.mark.integration]
# a small run of a Table 2 method, every field through the deployment's one `config` parameter
CONFIG = {"preset": "tiny-sdxl", "train": {"steps": 10, "method": "ukd"}, "eval": {"max_prompts": 2, "steps": 2},
          "data": {"toy_samples": 120}}
SMALL = ["--param", f"config={json.dumps(CONFIG)}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_deployment_runs_on_a_worker_and_refuses_bad_parameters(tmp_path):
    """One run on the worker (a second run, version 2 and the gate comparing it with v1 are test_flow.py's, in
    process), then parameters the server refuses before anything runs."""
    data = tmp_path / "data"
    env = {"PEA_DATA_DIR": str(data)}
    with LocalStack(tmp_path / "prefect", _free_port(), mlflow_port=None, extra_env=env) as stack:
        deployments = stack.prefect("deployment", "ls").stdout
        assert "pea/train-language" in deployments and "pea/retrain-ko" in deployments
        assert "pea-compress/compress" in deployments  # flows/compress_flow.py

        def run(*params: str):
            return stack.prefect("deployment", "run", "pea/train-language", *params, "--watch", check=False, timeout=1200)

        first = run("--param", "lang=ko", *SMALL)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        profile = load_profile("local", env=env)
        storage, uri = profile.storage(), profile.mlflow_tracking_uri
        assert storage.read_json("ko", "shards", "manifest.json")["samples"] == 120
        assert storage.glob("ko", "train", "*", "checkpoint_*")
        assert str(version_by_alias(uri, "ko", CHAMPION).version) == "1"
        run_name = storage.glob("ko", "train", "*", "checkpoint_*")[0].split("/")[-2]
        assert find_train_run(uri, "ko", run_name).data.params["train.method"] == "ukd"  # the parameter trained
        # v1 was evaluated with no champion: the gate must have promoted it for that reason, with its own numbers
        version = registry_client(uri).get_model_version("pea-ko", "1")
        expected = expected_decision(registry_client(uri), version)
        assert expected.promote and expected.reason == "no champion yet"
        assert {k: version.tags.get(k) for k in expected.tags()} == expected.tags()

        for params, words in ((["--param", "lang=xx"], ["'ko'", "'zh'"]),
                              (["--param", "lang=ko", "--param", 'config={"train": {"steps": -1}}'], ["steps", "0"]),
                              (["--param", "lang=ko", "--param", 'config={"train": {"method": "kd"}}'], ["ukd"])):
            bad = stack.prefect("deployment", "run", "pea/train-language", *params, check=False)
            said = bad.stdout + bad.stderr
            assert bad.returncode != 0 and all(w in said for w in words), said[-2000:]
        assert len(registry_client(uri).search_model_versions("name = 'pea-ko'")) == 1
