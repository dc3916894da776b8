import socket

import pytest

from pea.errors import PeaError
from pea.profiles import check_mlflow, load_profile


def test_local_profile_defaults_live_under_the_data_dir(tmp_path):
    prof = load_profile("local", env={}, cwd=tmp_path)
    assert prof.data_dir == tmp_path / "pea-data"
    assert prof.storage_root == str(tmp_path / "pea-data" / "storage")
    assert prof.mlflow_tracking_uri == f"sqlite:///{tmp_path}/pea-data/mlflow.db"
    assert prof.ray.address is None and not prof.ray.use_gpu


def test_cluster_profile_points_at_s3_a_server_and_gpus():
    prof = load_profile("cluster", env={})
    assert prof.storage_root.startswith("s3://")
    assert prof.mlflow_tracking_uri.startswith("http")
    assert prof.ray.use_gpu and prof.ray.address.startswith("ray://")


def test_cluster_training_goes_through_the_heads_jobs_api(tmp_path):
    """Training on the cluster is a Ray job on the head the Ray address names (its dashboard port): it outlives the
    Prefect worker. A local profile trains in-process, and an empty variable turns the Jobs API off."""
    prof = load_profile("cluster", env={})
    head = prof.ray.address.removeprefix("ray://").rsplit(":", 1)[0]
    assert prof.ray.jobs_address == f"http://{head}:8265"
    assert load_profile("local", env={}, cwd=tmp_path).ray.jobs_address is None
    assert load_profile("cluster", env={"PEA_RAY__JOBS_ADDRESS": ""}).ray.jobs_address is None


def test_environment_overrides_nested_fields(tmp_path):
    env = {"PEA_STORAGE_ROOT": "s3://b/p", "PEA_RAY__NUM_WORKERS": "4", "HOME": "/x", "PEA_PROFILE": "local"}
    prof = load_profile("local", env=env, cwd=tmp_path)
    assert prof.storage_root == "s3://b/p" and prof.ray.num_workers == 4


def test_mistyped_value_names_the_field_and_its_variable(tmp_path):
    with pytest.raises(PeaError) as e:
        load_profile("local", env={"PEA_RAY__NUM_WORKERS": "many"}, cwd=tmp_path)
    assert "ray.num_workers" in e.value.problem and "PEA_RAY__NUM_WORKERS" in e.value.fix


def test_missing_field_in_a_profile_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: mine\ndata_dir: .\nstorage_root: x\n")
    with pytest.raises(PeaError) as e:
        load_profile(str(path), env={})
    assert "'mlflow_tracking_uri' is missing" in e.value.problem


def test_unknown_field_in_a_profile_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: m\ndata_dir: .\nstorage_root: x\nmlflow_tracking_uri: sqlite:///m.db\nstorag: y\n")
    with pytest.raises(PeaError) as e:
        load_profile(str(path), env={})
    assert "'storag' is not a profile field" in e.value.problem


def test_unknown_profile_name():
    with pytest.raises(PeaError) as e:
        load_profile("laptop", env={})
    assert "local" in e.value.fix and "cluster" in e.value.fix


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mlflow_server_is_reported_with_the_fix():
    with pytest.raises(PeaError) as e:
        check_mlflow(f"http://127.0.0.1:{_free_port()}", timeout_s=1)
    assert "unreachable" in e.value.problem and "PEA_MLFLOW_TRACKING_URI" in e.value.fix


def test_sqlite_tracking_uri_gets_its_folder(tmp_path):
    check_mlflow(f"sqlite:///{tmp_path}/a/b/mlflow.db")
    assert (tmp_path / "a" / "b").is_dir()
