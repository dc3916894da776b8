"""Make kuberay-rayjob-spec.json, the schema tests/test_infra.py checks the KubeRay manifests (and the pod templates
of the Deployments) against, from KubeRay's RayJob CRD (Apache-2.0):

    curl -LO https://raw.githubusercontent.com/ray-project/kuberay/v1.6.0/ray-operator/config/crd/bases/ray.io_rayjobs.yaml
    uv run python infra/schemas/kuberay_schema.py ray.io_rayjobs.yaml v1.6.0 > infra/schemas/kuberay-rayjob-spec.json

It keeps the `spec` of the CRD's v1 schema (a RayJob's spec holds a whole RayCluster spec), without the
descriptions, and its pod templates (core/v1 PodTemplateSpec, the same schema each time) once, under $defs.
v1.6.0 is the oldest KubeRay infra/ supports (authOptions.secretName)."""

import json
import sys

import yaml


def main(crd_path: str, version: str) -> None:
    crd = yaml.safe_load(open(crd_path, encoding="utf-8"))
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    spec = strip(v1["schema"]["openAPIV3Schema"]["properties"]["spec"])
    pod = spec["properties"]["submitterPodTemplate"]
    spec = dedupe(spec, pod)
    out = {"$comment": f"KubeRay {version} ray.io_rayjobs.yaml, v1 spec; made by kuberay_schema.py",
           "$defs": {"PodTemplateSpec": pod}, **spec}
    json.dump(out, sys.stdout, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def dedupe(node, pod):
    if node == pod:
        return {"$ref": "#/$defs/PodTemplateSpec"}
    if isinstance(node, dict):
        return {k: dedupe(v, pod) for k, v in node.items()}
    if isinstance(node, list):
        return [dedupe(v, pod) for v in node]
    return node


if __name__ == "__main__":
    main(*sys.argv[1:3])
