"""infra/ checked offline: the Ray cluster YAML against the schema that ships inside ray, the manifests parse,
name one image, and agree with the `cluster` profile."""

import importlib.util
import json
import re
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import ray.autoscaler
import yaml

from pea.profiles import load_profile
from pea.train import run
from pea.train.run import REVISION_FILE

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
    assert all(images == {image} for path, images in found.items() if "networkpolicy" not in path), found


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
    assert {d["name"] for d in deployments} >= {"train-language", "compress", "retrain-ko", "retrain-zh", "retrain-ja",
                                                  "retrain-ru", "retrain-it"}
    for d in deployments:
        flow = "flows/compress_flow.py:compress" if d["name"] == "compress" else "flows/pea_flow.py:pea"
        assert d["entrypoint"] == flow and d["enforce_parameter_schema"] is True
        for schedule in d.get("schedules", []):
            assert schedule["cron"] and schedule["timezone"]


# --- what a cluster would refuse or trip over, checked without one ---------------------------------------------

ROOT = INFRA.parent
KUBERAY = json.loads((INFRA / "schemas" / "kuberay-rayjob-spec.json").read_text())
GPU = "nvidia.com/gpu"
A100 = "NVIDIA-A100-SXM4-80GB"
RAY_PODS = {"ray.io/is-ray-node": "yes"}  # KubeRay's label on every Ray pod
PREFECT_WORKER = {"app": "prefect-worker"}


def _strict(node):
    """Kubernetes' strict field validation: an object schema with properties takes no others."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in out and not open_ended:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


STRICT = _strict(KUBERAY)


def _kuberay_errors(instance, schema: dict = STRICT) -> list[str]:
    validator = jsonschema.Draft202012Validator({"$defs": STRICT["$defs"], **schema})
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def _doc(path: str, kind: str) -> dict:
    return next(d for d in _manifests()[path] if d.get("kind") == kind)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    number, unit = re.fullmatch(r"(\d+)([KMGT]i?)?", str(quantity)).groups()
    return int(number) * units.get(unit, 1)


def _pod_templates() -> list[tuple[str, dict, dict]]:
    """(where, pod template, the Ray group it belongs to or {}) for every pod infra/ starts."""
    docs, out = _manifests(), []
    for path in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        doc = docs[path][0]
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        out.append((f"{path} head", spec["headGroupSpec"]["template"], spec["headGroupSpec"]))
        out += [(f"{path} {g['groupName']}", g["template"], g) for g in spec["workerGroupSpecs"]]
    for path, documents in docs.items():
        out += [(path, d["spec"]["template"], {}) for d in documents if d.get("kind") == "Deployment"]
    return out


def _gpus(template: dict) -> int:
    return int(template["spec"]["containers"][0]["resources"].get("limits", {}).get(GPU, 0))


def _grants(policy: dict) -> set[tuple[int | None, tuple, tuple]]:
    """What a NetworkPolicy lets in, as (port or None for any, namespace labels, pod labels)."""
    out = set()
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), f"{policy['metadata']['name']}: a rule without `from` lets every pod in"
        ports = [p["port"] for p in rule.get("ports", [])] or [None]
        for peer in rule["from"]:
            assert "ipBlock" not in peer, f"{policy['metadata']['name']}: ipBlock {peer['ipBlock']}"
            ns = tuple(sorted(peer.get("namespaceSelector", {}).get("matchLabels", {}).items()))
            pods = tuple(sorted(peer.get("podSelector", {}).get("matchLabels", {}).items()))
            assert ns or pods, f"{policy['metadata']['name']}: an empty peer lets everything in"
            out |= {(port, ns, pods) for port in ports}
    return out


def _locked_version(name: str) -> str:
    return next(p["version"] for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"] if p["name"] == name)


def test_every_manifest_is_a_namespaced_object_of_a_kind_infra_knows():
    api = {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "Deployment": "apps/v1", "Service": "v1",
           "NetworkPolicy": "networking.k8s.io/v1"}
    docs = [d for path, documents in _manifests().items() if path != "ray/cluster-aws.yaml" for d in documents]
    assert {d["kind"] for d in docs} == set(api)
    for d in docs:
        assert d["apiVersion"] == api[d["kind"]], d["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]), d["metadata"]
        assert d["metadata"]["namespace"] == "pea", d["metadata"]
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in docs if d["kind"] == "Deployment"}
    for d in (d for d in docs if d["kind"] == "Deployment"):
        assert d["spec"]["selector"]["matchLabels"].items() <= pods[d["metadata"]["name"]]["metadata"]["labels"].items()
    for service in (d for d in docs if d["kind"] == "Service"):
        pod = next(p for p in pods.values() if service["spec"]["selector"].items() <= p["metadata"]["labels"].items())
        container_ports = {p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports


def test_the_kuberay_manifests_and_pod_templates_follow_kuberays_schema():
    rayjob = _doc("kuberay/rayjob.yaml", "RayJob")
    assert _kuberay_errors(rayjob["spec"]) == []
    raycluster = _doc("kuberay/raycluster.yaml", "RayCluster")
    assert _kuberay_errors(raycluster["spec"], STRICT["properties"]["rayClusterSpec"]) == []
    for path, template, _ in _pod_templates():  # the Deployments' too: the same core/v1 PodTemplateSpec
        assert _kuberay_errors(template, STRICT["$defs"]["PodTemplateSpec"]) == [], path
    # the check bites: a misspelt field, a field in the wrong place, a malformed quantity
    typo = json.loads(json.dumps(rayjob["spec"]).replace('"entrypointNumGpus"', '"entrypointNumGPUs"'))
    assert any("entrypointNumGPUs" in e for e in _kuberay_errors(typo))
    misplaced = json.loads(json.dumps(rayjob["spec"]).replace('"tolerations"', '"toleration"'))
    assert any("toleration" in e for e in _kuberay_errors(misplaced))
    bad = json.loads(json.dumps(rayjob["spec"]).replace('"900Gi"', '"900 GB"'))
    assert any("900 GB" in e for e in _kuberay_errors(bad))


def test_the_ray_cluster_can_grow_to_64_gpus():
    spec = _doc("kuberay/raycluster.yaml", "RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert sum(g["maxReplicas"] * _gpus(g["template"]) for g in spec["workerGroupSpecs"]) >= 64
    aws = yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())
    gpu_types = {name: t for name, t in aws["available_node_types"].items() if t["resources"].get("GPU")}
    assert sum(min(t["max_workers"], aws["max_workers"]) * t["resources"]["GPU"] for t in gpu_types.values()) >= 64


def test_every_gpu_pod_tolerates_the_gpu_taint_and_multi_gpu_pods_have_a_shm_for_nccl():
    gpu_pods = [(where, t, g) for where, t, g in _pod_templates() if _gpus(t)]
    assert len(gpu_pods) == 4  # raycluster a100, rayjob driver and a100, the Prefect worker
    for where, template, group in gpu_pods:
        pod = template["spec"]
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod.get("tolerations", []), where
        if _gpus(template) == 8:  # the A100 nodes, and an 8-GPU worker takes a whole one
            assert pod["nodeSelector"] == {"nvidia.com/gpu.product": A100}, where
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            shm = next(v for v in pod["volumes"] if v["name"] == mounts["/dev/shm"])["emptyDir"]
            assert shm["medium"] == "Memory" and _bytes(shm["sizeLimit"]) >= 32 * 2**30, where
            # Ray's object store shares /dev/shm with NCCL: it must leave room
            assert int(group["rayStartParams"]["object-store-memory"]) <= _bytes(shm["sizeLimit"]) - 8 * 2**30, where
        else:  # a one-GPU pod stays off the A100 nodes, where it would strand the other seven GPUs
            required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            off_a100 = {"key": "nvidia.com/gpu.product", "operator": "NotIn", "values": [A100]}
            assert required["nodeSelectorTerms"] == [{"matchExpressions": [off_a100]}], where
    heads = [t for where, t, _ in _pod_templates() if where.endswith(" head")]
    assert all(_gpus(t) == 0 for t in heads)
    aws = yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())
    shm = _bytes(re.search(r"--shm-size=(\d+)g", " ".join(aws["docker"]["run_options"])).group(1) + "G")
    store = int(re.search(r"--object-store-memory=(\d+)", " ".join(aws["worker_start_ray_commands"])).group(1))
    assert shm >= 32 * 2**30 and store <= shm - 8 * 2**30


def test_the_rayjobs_entrypoint_gets_a_gpu_of_its_own_and_training_keeps_its_gpus():
    spec = _doc("kuberay/rayjob.yaml", "RayJob")["spec"]
    cluster = spec["rayClusterSpec"]
    assert spec["entrypointNumGpus"] >= 1 and cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    seat = json.loads(spec["entrypointResources"])  # a custom Ray resource that only one group has
    has_seat = [all(float(g.get("resources", {}).get(k, 0)) >= n for k, n in seat.items()) for g in cluster["workerGroupSpecs"]]
    assert seat and has_seat.count(True) == 1
    driver = cluster["workerGroupSpecs"][has_seat.index(True)]
    assert _gpus(driver["template"]) >= spec["entrypointNumGpus"]
    training = [g for g in cluster["workerGroupSpecs"] if g is not driver]
    assert sum(g["maxReplicas"] * _gpus(g["template"]) for g in training) >= PROFILE.ray.num_workers


def test_ray_demands_a_token_and_only_peas_pods_reach_it():
    worker = _doc("prefect/worker.yaml", "Deployment")["spec"]["template"]
    env = {e["name"]: e for e in worker["spec"]["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    token = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["key"] == "auth_token"  # the key KubeRay reads from authOptions.secretName
    ray_version = _locked_version("ray")
    assert tuple(map(int, ray_version.split(".")[:2])) >= (2, 52)  # token auth
    for path, kind in (("kuberay/raycluster.yaml", "RayCluster"), ("kuberay/rayjob.yaml", "RayJob")):
        spec = _doc(path, kind)["spec"]
        spec = spec.get("rayClusterSpec", spec)
        assert spec["authOptions"] == {"mode": "token", "secretName": token["name"]}, path
        assert spec["rayVersion"] == ray_version, path
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP", path
    assert worker["metadata"]["labels"] == PREFECT_WORKER
    policy = _doc("kuberay/networkpolicy.yaml", "NetworkPolicy")
    assert policy["spec"]["podSelector"] == {"matchLabels": RAY_PODS} and policy["spec"]["policyTypes"] == ["Ingress"]
    prefect, ray_pods = tuple(PREFECT_WORKER.items()), tuple(RAY_PODS.items())
    operator = ((("kubernetes.io/metadata.name", "kuberay-system"),), (("app.kubernetes.io/name", "kuberay-operator"),))
    assert _grants(policy) == {
        (None, (), ray_pods),  # Ray's own pods, on every port
        (8265, (), prefect), (10001, (), prefect),  # Jobs API, Ray Client
        (8265, (), (("ray.io/originated-from-crd", "RayJob"),)), (8265, *operator),  # a RayJob's submitter, the operator
        (8080, (("kubernetes.io/metadata.name", "monitoring"),), ()),  # Prometheus
    }
    client_port = urlparse(PROFILE.ray.address).port
    assert (client_port, (), prefect) in _grants(policy)


def test_mlflow_is_reached_only_by_peas_pods_and_through_a_cluster_ip():
    deployment = _doc("mlflow/mlflow.yaml", "Deployment")
    service = _doc("mlflow/mlflow.yaml", "Service")
    policy = _doc("mlflow/mlflow.yaml", "NetworkPolicy")
    assert service["spec"]["type"] == "ClusterIP"
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    port = service["spec"]["ports"][0]["targetPort"]
    assert _grants(policy) == {(port, (), tuple(PREFECT_WORKER.items())), (port, (), tuple(RAY_PODS.items()))}
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert urlparse(PROFILE.mlflow_tracking_uri).netloc in hosts and "localhost:5000" in hosts  # + port-forward
    for documents in _manifests().values():
        assert not {"LoadBalancer", "NodePort"} & (set(_walk(documents, "type")) | set(_walk(documents, "serviceType")))


def test_the_prefect_worker_runs_no_more_flows_than_it_has_gpus():
    """A flow runs its GPU stages in the worker's pod: two flows on one GPU would share its memory."""
    container = _doc("prefect/worker.yaml", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    limit = int(container["command"][container["command"].index("--limit") + 1])
    gpus = int(container["resources"]["limits"].get(GPU, 0))
    assert gpus == 0 or 1 <= limit <= gpus


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) in order, comment lines dropped and continued lines joined, as docker reads it."""
    lines = [line for line in (INFRA / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in "\n".join(lines).replace("\\\n", "").splitlines() if line.strip()]


def test_the_image_has_what_the_manifests_commands_need_and_checks_it_at_build_time():
    steps = _dockerfile()
    runs = [args for op, args in steps if op == "RUN"]
    apt = next(r for r in runs if "apt-get install" in r)
    assert "rsync" in apt.split()  # the Ray cluster launcher rsyncs into the container
    last_sync = max(i for i, r in enumerate(runs) if "uv sync" in r)
    postgres = next(i for i, r in enumerate(runs) if "uv pip install" in r)
    assert postgres > last_sync and re.search(r"\bpsycopg==[\d.]+ psycopg-binary==[\d.]+", runs[postgres])
    check = next(i for i, r in enumerate(runs) if 'python -c "import' in r)
    assert check > postgres
    modules = {m.strip() for m in re.search(r'python -c "import ([^"]+)"', runs[check]).group(1).split(",")}
    assert {"pea", "ray.train", "torch", "diffusers", "transformers", "open_clip", "mlflow.server", "prefect",
            "webdataset", "img2dataset", "psycopg"} <= modules
    for module in modules - {"psycopg"}:  # the names are importable ones (psycopg is the image's own install)
        assert importlib.util.find_spec(module.split(".")[0]) is not None, module
    # every command a manifest starts is one the build ran
    commands = {d["spec"]["template"]["spec"]["containers"][0]["command"][0]
                for documents in _manifests().values() for d in documents if d.get("kind") == "Deployment"}
    commands |= {_doc("kuberay/rayjob.yaml", "RayJob")["spec"]["entrypoint"].split()[0], "ray", "rsync"}
    for command in commands:
        assert re.search(rf"&& {command} (server )?--(help|version)", runs[check]), command


def test_training_tags_its_runs_with_the_images_revision_file(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "REVISION_FILE", tmp_path / "REVISION")
    assert len(run.code_revision()) == 40  # this checkout: git's HEAD
    (tmp_path / "REVISION").write_text("0123abcd\n")
    assert run.code_revision() == "0123abcd"


def test_the_image_records_the_revision_it_was_built_from():
    steps = _dockerfile()
    assert ("ARG", "REVISION") in steps
    arg = steps.index(("ARG", "REVISION"))
    assert all(op not in ("RUN", "COPY") or "uv" not in args for op, args in steps[arg:])  # no reinstall per commit
    run = next(args for op, args in steps[arg:] if op == "RUN")
    assert "exit 1" in run and "> /opt/pea/REVISION" in run
    assert REVISION_FILE == ROOT / "REVISION"  # /opt/pea/REVISION: the project is installed at /opt/pea
    build = next(line for line in (INFRA / "Dockerfile").read_text().splitlines() if "docker build" in line)
    assert "--build-arg REVISION=$(git rev-parse HEAD)" in build


def test_the_images_environment_and_the_manifests_leave_the_profile_loadable():
    """The profile reads every PEA_* variable as a field: one it does not know fails every run."""
    env = {}
    for op, args in _dockerfile():
        if op == "ENV":
            env |= dict(pair.split("=", 1) for pair in args.split())
    for documents in _manifests().values():
        for d in documents:
            for container in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    rayjob_env = yaml.safe_load(_doc("kuberay/rayjob.yaml", "RayJob")["spec"]["runtimeEnvYAML"])["env_vars"]
    profile = load_profile(env["PEA_PROFILE"], env=env | rayjob_env)
    assert profile.name == "cluster" and profile.ray.address == "auto"
