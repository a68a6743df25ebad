"""deploy/: Dockerfiles pass hadolint and copy files that exist; manifests pass the Kubernetes schemas and
name recipes, images and secrets that exist; the Slurm script parses."""

import copy
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = "1.33"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGES = {f"rlstack:{VERSION}-cpu": "Dockerfile.cpu", f"rlstack:{VERSION}-gpu": "Dockerfile.gpu"}


def manifests() -> list[dict]:
    return [doc for path in sorted((DEPLOY / "kuberay").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]


def pod_templates(doc: dict) -> list[dict]:
    """The pod templates of a RayCluster, a RayJob's cluster, or a Deployment."""
    spec = doc["spec"]
    if doc["kind"] == "Deployment":
        return [spec["template"]]
    cluster = spec["rayClusterSpec"] if doc["kind"] == "RayJob" else spec
    return [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]


def check(docs: list[dict]) -> None:
    """``ValueError`` naming what a set of manifests gets wrong."""
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for doc in docs:
        if doc["kind"] in ("RayCluster", "RayJob"):
            if doc["apiVersion"] != "ray.io/v1":
                raise ValueError(f"{doc['kind']} {doc['metadata']['name']}: apiVersion {doc['apiVersion']}")
            cluster = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
            if not cluster["workerGroupSpecs"] or any("groupName" not in g for g in cluster["workerGroupSpecs"]):
                raise ValueError(f"{doc['metadata']['name']}: every worker group needs a groupName")
            for template in pod_templates(doc):  # KubeRay embeds plain pod templates: check them with k8s' schema
                kubernetes_validate.validate(
                    {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template},
                    KUBERNETES,
                    strict=True,
                )
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        if doc["kind"] == "RayJob":
            words = shlex.split(doc["spec"]["entrypoint"])
            recipe = next(w for w in words if w.endswith(".yaml"))
            if not (ROOT / recipe).is_file():
                raise ValueError(f"RayJob {doc['metadata']['name']}: no recipe {recipe}")
        if doc["kind"] in ("RayCluster", "RayJob", "Deployment"):
            for template in pod_templates(doc):
                for container in template["spec"]["containers"]:
                    if container["image"] not in IMAGES:
                        raise ValueError(f"{doc['metadata']['name']}: image {container['image']} is not built here")
                    for env in container.get("env", []):
                        ref = env.get("valueFrom", {}).get("secretKeyRef")
                        if ref and ref["name"] not in secrets:
                            raise ValueError(f"{doc['metadata']['name']}: no Secret {ref['name']}")


def test_the_manifests_pass_the_kubernetes_schemas_and_name_what_exists():
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"RayCluster", "RayJob", "Deployment", "Service", "Secret"}
    check(docs)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("RayJob", "spec", "entrypoint"), "python -m rlstack.train recipes/none.yaml", "no recipe recipes/none.yaml"),
        (("RayCluster", "spec", "headGroupSpec", "template", "spec", "containers", 0, "image"), "rlstack:9-gpu",
         "image rlstack:9-gpu is not built here"),
        (("Secret", "metadata", "name"), "other-secret", "no Secret rlstack-service-token"),
        (("Deployment", "spec", "template", "spec", "containers", 0, "portz"), [], "portz"),
    ],
)  # fmt: skip
def test_a_manifest_naming_a_missing_recipe_image_or_secret_fails(path, value, message):
    docs = copy.deepcopy(manifests())
    kind, *keys = path
    node = next(d for d in docs if d["kind"] == kind)
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    with pytest.raises((ValueError, kubernetes_validate.ValidationError), match=message):
        check(docs)


def test_the_rayjob_entrypoint_is_the_readme_command():
    readme = (ROOT / "README.md").read_text()
    submitted = re.search(r"ray job submit --working-dir \. -- (python -m rlstack\.train \S+)", readme)
    assert submitted is not None
    rayjob = next(d for d in manifests() if d["kind"] == "RayJob")
    assert rayjob["spec"]["entrypoint"] == submitted.group(1)


@pytest.mark.parametrize("dockerfile", sorted(set(IMAGES.values())))
def test_dockerfiles_pass_hadolint_and_copy_files_that_exist(dockerfile):
    path = DEPLOY / "docker" / dockerfile
    lint = subprocess.run([Path(sys.executable).parent / "hadolint", str(path)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    for line in path.read_text().splitlines():
        if line.startswith("COPY"):
            sources = [w for w in line.split()[1:-1] if not w.startswith("--")]
            assert sources and all((ROOT / s).exists() for s in sources), line
    assert f"-t rlstack:{VERSION}-{dockerfile.split('.')[-1]} " in path.read_text()


def test_the_slurm_script_parses_and_names_a_recipe_that_exists():
    script = DEPLOY / "slurm" / "rlstack.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    default = re.search(r"RECIPE=\$\{1:-(\S+)\}", script.read_text())
    assert default is not None and (ROOT / default.group(1)).is_file()
