"""``deploy/kubernetes``: valid Kubernetes objects, and consistent with the image they run.

No cluster: every manifest is validated strictly (unknown fields rejected) against the schemas
``kubernetes-validate`` ships, and checked against ``docker/collector.Dockerfile`` (ports, user,
data volume), the settings tables (every environment variable is one the collector or the
producer reads), the drain timeout (below the grace period) and itself (the agent's endpoint
list names the StatefulSet's collectors, selectors match their pods).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from collector import config as collector_config
from producer import config as producer_config
from producer.wire import curve

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
DOCKERFILE = (ROOT / "docker" / "collector.Dockerfile").read_text()
KUBERNETES = "1.30.0"
#: Read by the ClearML SDK in the collector, not by clearml-relay's settings tables.
CLEARML_SDK_ENV = {"CLEARML_API_HOST", "CLEARML_WEB_HOST", "CLEARML_FILES_HOST", "CLEARML_API_ACCESS_KEY",
                   "CLEARML_API_SECRET_KEY"}  # fmt: skip


def _documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
    return docs


DOCS = _documents()


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_the_kustomization_names_every_manifest() -> None:
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_object_is_valid_for_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_an_invalid_object_is_caught() -> None:
    """The validation above can fail: a misspelt field is refused."""
    broken = yaml.safe_load(yaml.safe_dump(_one("StatefulSet", "collector")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_collectors_run_the_image_as_it_is_built() -> None:
    statefulset = _one("StatefulSet", "collector")
    pod = statefulset["spec"]["template"]["spec"]
    container = _container(statefulset)
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", DOCKERFILE, re.M)[1].split()}  # type: ignore[index]
    assert {p["containerPort"] for p in container["ports"]} == exposed
    uid = int(re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.M)[1])  # type: ignore[index]
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == uid
    assert re.search(r'^VOLUME \["/data"\]$', DOCKERFILE, re.M)
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/data"}
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    metrics = next(p for p in container["ports"] if p["name"] == "metrics")
    assert f"CLEARML_RELAY_METRICS_PORT={metrics['containerPort']}" in DOCKERFILE
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    drain = float(_env(container)[collector_config.ENV_DRAIN_TIMEOUT])
    assert pod["terminationGracePeriodSeconds"] > drain + 5


def test_every_variable_is_a_setting_something_reads() -> None:
    known = {
        s.env for s in (*collector_config.SETTINGS, *collector_config.LOG_SETTINGS, *producer_config.SETTINGS)
    }
    known |= {curve.ENV_SERVER_KEY, curve.ENV_KEY_FILE} | CLEARML_SDK_ENV
    secret = _one("Secret", "clearml-relay")
    for doc in DOCS:
        if doc["kind"] in ("StatefulSet", "DaemonSet"):
            assert set(_env(_container(doc))) <= known, doc["metadata"]["name"]
    assert {k for k in secret["stringData"] if k.isupper()} <= known


def test_the_agent_delivers_to_exactly_the_statefulsets_collectors() -> None:
    statefulset, service = _one("StatefulSet", "collector"), _one("Service", "collector")
    agent = _one("DaemonSet", "agent")
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "zmq")
    names = [f"tcp://collector-{i}.collector:{port}" for i in range(statefulset["spec"]["replicas"])]
    endpoints = _env(_container(agent))[producer_config.ENV_ENDPOINT]
    assert endpoints.split(",") == names
    producer_config.ProducerConfig.from_env(endpoint=endpoints)  # a list the producer takes
    assert _container(agent)["command"] == ["clearml-relay", "agent"]
    assert {m["mountPath"] for m in _container(agent)["volumeMounts"]} >= {"/spool"}
    assert "--spool-dir" in _container(agent)["args"]


def test_selectors_match_the_pods_they_select() -> None:
    pods = _one("StatefulSet", "collector")["spec"]["template"]["metadata"]["labels"]
    for selector in (
        _one("Service", "collector")["spec"]["selector"],
        _one("PodDisruptionBudget", "collector")["spec"]["selector"]["matchLabels"],
        _one("StatefulSet", "collector")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pods.items()
    agent = _one("DaemonSet", "agent")
    assert (
        agent["spec"]["selector"]["matchLabels"].items()
        <= agent["spec"]["template"]["metadata"]["labels"].items()
    )


def test_every_secret_a_pod_reads_is_defined_with_the_keys_it_reads() -> None:
    secrets = {d["metadata"]["name"]: d["stringData"] for d in DOCS if d["kind"] == "Secret"}
    for doc in DOCS:
        if doc["kind"] not in ("StatefulSet", "DaemonSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        for source in _container(doc).get("envFrom", []):
            assert source["secretRef"]["name"] in secrets
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                assert name in secrets, name
                assert {i["key"] for i in volume["secret"].get("items", [])} <= set(secrets[name]), name
