"""infra/ checked offline: the Ray cluster YAML against the schema that ships inside ray, the manifests parse,
name one image, and agree with the `cluster` profile."""

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import ray.autoscaler
import yaml

from pea.profiles import load_profile

INFRA = Path(__file__).resolve().parents[1] / "infra"
PROFILE = load_profile("cluster", env={})


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> dict[str, list[dict]]:
    return {str(p.relative_to(INFRA)): _docs(p) for p in sorted(INFRA.rglob("*.yaml"))}


def _walk(node, key):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


def test_the_ray_cluster_yaml_follows_rays_own_schema():
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())
    jsonschema.validate(config, schema)
    a100 = config["available_node_types"]["a100"]["resources"]
    assert a100["GPU"] >= PROFILE.ray.num_workers and a100["CPU"] >= PROFILE.ray.num_workers * PROFILE.ray.cpus_per_worker


def test_every_manifest_names_the_one_pea_image():
    dockerfile = (INFRA / "Dockerfile").read_text()
    image = re.search(r"-t (\S+) \.", dockerfile).group(1)
    found = {path: set(_walk(docs, "image")) for path, docs in _manifests().items()}
    assert all(images == {image} for images in found.values()), found


def test_the_cluster_profile_points_at_the_services_infra_defines():
    docs = _manifests()
    raycluster = docs["kuberay/raycluster.yaml"][0]
    namespace = raycluster["metadata"]["namespace"]
    ray_url = urlparse(PROFILE.ray.address)
    assert ray_url.scheme == "ray" and ray_url.hostname == f"{raycluster['metadata']['name']}-head-svc.{namespace}.svc.cluster.local"
    head_ports = {p["containerPort"] for p in raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ray_url.port in head_ports
    workers = raycluster["spec"]["workerGroupSpecs"][0]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert PROFILE.ray.use_gpu and int(limits["nvidia.com/gpu"]) * workers["maxReplicas"] >= PROFILE.ray.num_workers
    assert int(limits["cpu"]) >= int(limits["nvidia.com/gpu"]) * PROFILE.ray.cpus_per_worker
    service = next(d for d in docs["mlflow/mlflow.yaml"] if d["kind"] == "Service")
    mlflow_url = urlparse(PROFILE.mlflow_tracking_uri)
    assert mlflow_url.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert mlflow_url.port == service["spec"]["ports"][0]["port"]
    args = next(d for d in docs["mlflow/mlflow.yaml"] if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    bucket = PROFILE.storage_root.removeprefix("s3://").split("/")[0]
    assert f"--artifacts-destination=s3://{bucket}/mlflow" in args


def test_the_prefect_worker_serves_the_pool_the_deployments_use():
    deployments = yaml.safe_load((INFRA.parent / "prefect.yaml").read_text())["deployments"]
    pools = {d["work_pool"]["name"] for d in deployments}
    worker = _manifests()["prefect/worker.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    assert pools == {worker["command"][worker["command"].index("--pool") + 1]}
    assert {"name": "PEA_PROFILE", "value": PROFILE.name} in worker["env"]
    assert {d["name"] for d in deployments} >= {"train-language", "retrain-ko", "retrain-zh", "retrain-ja",
                                                  "retrain-ru", "retrain-it"}
    for d in deployments:
        assert d["entrypoint"] == "flows/pea_flow.py:pea" and d["enforce_parameter_schema"] is True
        for schedule in d.get("schedules", []):
            assert schedule["cron"] and schedule["timezone"]
