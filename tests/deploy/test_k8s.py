"""deploy/k8s is valid Kubernetes and consistent with the services, without a cluster.

Every manifest is validated against the Kubernetes API's own JSON schemas, strict (an unknown or
misspelt field fails), as shipped offline by the kubernetes-validate package (the schemas are
generated from the Kubernetes OpenAPI definitions; no network at test time). On top of that, the
structure is checked: a Deployment, a Service and a PodDisruptionBudget per service with matching
selectors, ports that agree with the services' configuration, probes on the metrics port, a graceful
stop, Secrets referenced but never included, and a set-up Job that migrates every database and
declares every service's queues before anything publishes.
"""
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
METRICS_PORTS = {"intake": 9101, "triage": 9102, "enforcement": 9103, "notify": 9104, "metrics": 9105}
SERVICE_CLASSES = [f"{svc}.service:{svc.capitalize()}Service" for svc in METRICS_PORTS]


def manifests():
    """(file name, document) for every document of every manifest file."""
    found = []
    for path in sorted(K8S.glob("*.yml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                found.append((path.name, document))
    return found


def objects(kind):
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def containers(pod_spec):
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


@pytest.mark.parametrize("name, document", manifests(),
                         ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}")
def test_every_manifest_is_valid_kubernetes(name, document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    assert document["metadata"].get("namespace", "wuji") == "wuji" or document["kind"] == "Namespace"


def test_the_schema_check_rejects_a_misspelt_field():
    deployment = objects("Deployment")["intake"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_sets_the_image():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yml"))
    assert kustomization["namespace"] == "wuji"
    [image] = kustomization["images"]
    images = {c["image"] for _, doc in manifests() if doc["kind"] in ("Deployment", "Job")
              for c in containers(doc["spec"]["template"]["spec"])}
    assert images == {image["name"]}


def test_each_service_has_a_deployment_a_service_and_a_disruption_budget():
    deployments, services, budgets = objects("Deployment"), objects("Service"), objects("PodDisruptionBudget")
    assert set(deployments) == set(services) == set(budgets) == set(METRICS_PORTS)
    for svc, deployment in deployments.items():
        spec = deployment["spec"]
        pod_labels = spec["template"]["metadata"]["labels"]
        selector = spec["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        assert services[svc]["spec"]["selector"] == selector
        assert budgets[svc]["spec"]["selector"]["matchLabels"] == selector
        # scale-out: more than one instance, never all of them down at once
        assert spec["replicas"] >= 2
        assert budgets[svc]["spec"]["minAvailable"] == 1
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_deployments_run_the_image_entrypoint_with_their_service_and_ports():
    for svc, deployment in objects("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert "command" not in container and "args" not in container    # deploy/entrypoint.sh
        env = {e["name"]: e for e in container["env"]}
        assert env["SERVICE"]["value"] == svc
        assert int(env[f"{svc.upper()}_METRICS_PORT"]["value"]) == METRICS_PORTS[svc]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == METRICS_PORTS[svc]
        service_ports = {p["name"]: p for p in objects("Service")[svc]["spec"]["ports"]}
        assert service_ports["metrics"]["targetPort"] == "metrics"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(METRICS_PORTS[svc])
        if svc == "intake":
            assert ports["http"] == 8000 and env["API_ADDRESS"]["value"] == "0.0.0.0:8000"
            assert service_ports["http"]["port"] == 8000


def test_probes_graceful_stop_and_a_locked_down_container():
    for svc, deployment in objects("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, (svc, probe)
        assert "readinessProbe" in container
        # longer than the longest handler (RPC 5 s, SMTP 10 s), like the compose file's 30 s
        assert pod["terminationGracePeriodSeconds"] >= 30
        security = container["securityContext"]
        assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
        assert security["allowPrivilegeEscalation"] is False
        # the only writable place: /tmp (deploy/entrypoint.sh may write a config overlay there)
        assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def env_references(container):
    """Names a container's env refers to with $(NAME), and the names defined before each use."""
    defined = set()
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        defined |= set(objects("ConfigMap")[name]["data"])
    for variable in container.get("env", []):
        for used in re.findall(r"\$\((\w+)\)", variable.get("value", "")):
            yield used, set(defined)
        defined.add(variable["name"])
    for argument in container.get("command", []) + container.get("args", []):
        for used in re.findall(r"\$\((\w+)\)", argument):
            yield used, set(defined)


def test_urls_are_built_from_variables_defined_before_them():
    for _, doc in manifests():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in containers(doc["spec"]["template"]["spec"]):
            for used, defined in env_references(container):
                assert used in defined, f"{container['name']}: $({used}) is not defined before its use"


def test_secrets_are_referenced_never_included():
    assert not objects("Secret"), "Secrets are created by the operator (deploy/README.md), never committed"
    referenced = set()
    for _, doc in manifests():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in containers(doc["spec"]["template"]["spec"]):
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add((ref["name"], ref["key"]))
                elif re.search(r"PASSWORD|SECRET|KEY|TOKEN", variable["name"]):
                    pytest.fail(f"{container['name']}: {variable['name']} is not taken from a Secret")
    for config in objects("ConfigMap").values():
        for key in config["data"]:
            assert not re.search(r"PASSWORD|SECRET|KEY|TOKEN", key), key
    # the README tells the operator how to create each one
    readme = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    for name, key in sorted(referenced):
        assert re.search(rf"{re.escape(name)}\b.*--from-literal={re.escape(key)}=", readme), (name, key)


def test_the_setup_job_migrates_every_database_then_declares_every_queue():
    job = objects("Job")["wuji-setup"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    migrations = [c["command"][-1] for c in pod["initContainers"]]
    assert migrations == [f"{svc} db upgrade --load-reference" for svc in METRICS_PORTS]
    for svc, container in zip(METRICS_PORTS, pod["initContainers"]):
        assert {e["name"] for e in container["env"]} >= {f"{svc.upper()}_DB_URL"}
    [declare] = pod["containers"]
    assert declare["command"][:2] == ["wuji-broker", "declare"]
    assert declare["command"][-len(SERVICE_CLASSES):] == SERVICE_CLASSES
    # the compose file's declaration job declares the same classes
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["declare-queues"]["command"] == SERVICE_CLASSES
