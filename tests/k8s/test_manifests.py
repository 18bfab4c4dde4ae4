"""The Kubernetes manifests of k8s/: each overlay builds (tests/k8s/kustomize.py),
every object validates against the Kubernetes 1.30 schemas (strict), and the
objects agree with each other and with the server: selectors, ports, probes,
ConfigMap and Secret keys, settings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from aster.server.app import LIVENESS_SERVICE
from aster.server.cli import build_parser
from aster.server.config import Settings
from aster.server.edge import k8s
from aster.server.edge.runner import envoy_args
from aster.server.rpc.catalog import service_names
from tests.k8s.kustomize import Obj, build, key, load_documents, pod_spec
from tests.k8s.objects import (
    BUILDS,
    EDGE_CONFIG,
    EDGE_FILES_DIR,
    IMAGE_UID,
    K8S_DIR,
    OVERLAYS,
    SECRET_EXAMPLE,
    built,
    config_map_data,
    config_map_files,
    container,
    containers,
    effective_env,
    find,
    generated,
    maybe,
    of_kind,
    pod_labels,
    resolve_port,
    secret_example,
    selected_workloads,
    selects,
    settings_from,
    workloads,
)

# The Kubernetes version the manifests are checked against: the oldest one
# they are meant for (native gRPC probes are GA since 1.27).
KUBERNETES_VERSION = "1.30.0"
KUBERNETES_VALIDATE_PIN = "kubernetes-validate==1.37.0"
SECRET_NAME = "aster-secrets"
SERVER, EDGE, MIGRATE = "aster-server", "aster-edge", "aster-migrate"
HEADLESS = "aster-server-headless"
# The envoy console script of the image's virtualenv (k8s/Dockerfile).
EDGE_ENVOY = "/opt/aster/bin/envoy"


def kubernetes_validate() -> ModuleType:
    """The validator, imported when needed so the rest of the suite runs
    without it; missing, the test fails and says what to install."""
    try:
        import kubernetes_validate as module  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail(
            f"the k8s/ tests need {KUBERNETES_VALIDATE_PIN} (a dev dependency): "
            f"pip install '{KUBERNETES_VALIDATE_PIN}'"
        )
    loaded: ModuleType = module
    return loaded


# --- Building and schema validation ---------------------------------------


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_every_object_validates_against_the_kubernetes_schema(name: str) -> None:
    validator = kubernetes_validate()
    problems = []
    for obj in built(name):
        try:
            validator.validate(obj, KUBERNETES_VERSION, strict=True)
        except validator.ValidationError as err:
            where = ".".join(str(p) for p in err.path)
            problems.append(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {err.message}")
    assert not problems, "\n".join(problems)


def test_the_example_secret_validates() -> None:
    validator = kubernetes_validate()
    validator.validate(secret_example(), KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_kubectl_kustomize_builds_the_same_objects(name: str) -> None:
    """The pure-Python build agrees with the real kustomize where it exists."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: the pure-Python build is checked on its own")
    result = subprocess.run(
        [kubectl, "kustomize", str(BUILDS[name])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    theirs = {key(o): o for o in yaml.safe_load_all(result.stdout) if o}
    ours = {key(o): o for o in built(name)}
    assert sorted(ours) == sorted(theirs)
    for item, obj in ours.items():
        assert obj == theirs[item], item


def test_every_manifest_file_is_used() -> None:
    """No file in k8s/base or an overlay is forgotten by its kustomization,
    and the example Secret is in none (applying would overwrite the real one).
    Under edge/, every file goes into the ConfigMap but settings.env, the
    input `aster gen` renders envoy.yaml from."""
    for directory in [K8S_DIR / "base", *OVERLAYS.values()]:
        config = yaml.safe_load((directory / "kustomization.yaml").read_text())
        used = {*config.get("resources", []), *(p["path"] for p in config.get("patches", []))}
        generated_files = {
            entry.rpartition("=")[2]
            for generator in config.get("configMapGenerator", [])
            for entry in generator.get("files", [])
        }
        files = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert files <= used, f"{directory}: unused {sorted(files - used)}"
        assert "secret" not in " ".join(sorted(used | generated_files)).lower()
        edge_files = {
            p.relative_to(directory).as_posix() for p in directory.glob("edge/*") if p.is_file()
        }
        unused = edge_files - generated_files - {f"edge/{k8s.SETTINGS_FILE}"}
        assert not unused, f"{directory}: unused {sorted(unused)}"
        for name in generated_files:
            assert (directory / name).is_file(), name
    assert SECRET_EXAMPLE.parent == K8S_DIR


def test_the_subset_of_kustomize_refuses_what_it_does_not_support(tmp_path: Path) -> None:
    from tests.k8s.kustomize import KustomizeError

    (tmp_path / "kustomization.yaml").write_text("resources: []\nsecretGenerator: []\n")
    with pytest.raises(KustomizeError, match="secretGenerator"):
        build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "configMapGenerator:\n  - name: x\n    literals: [a=b]\n"
    )
    with pytest.raises(KustomizeError, match="configMapGenerator"):
        build(tmp_path)


# --- Cross-references -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_selectors_match_the_pods_they_mean(name: str) -> None:
    objects = built(name)
    for workload in workloads(objects):
        selector = workload["spec"].get("selector")
        if selector is not None:
            assert selects(selector, pod_labels(workload)), key(workload)
        for constraint in pod_spec(workload).get("topologySpreadConstraints", []):  # type: ignore[union-attr]
            assert selected_workloads(objects, constraint["labelSelector"]) == [workload]
    # Each Deployment's selector picks its own pods only.
    for deployment in of_kind(objects, "Deployment"):
        assert selected_workloads(objects, deployment["spec"]["selector"]) == [deployment]
    for service in of_kind(objects, "Service"):
        targets = selected_workloads(objects, service["spec"]["selector"])
        assert [t["metadata"]["name"] for t in targets] == [
            {HEADLESS: SERVER, EDGE: EDGE}[service["metadata"]["name"]]
        ]
    for pdb in of_kind(objects, "PodDisruptionBudget"):
        [target] = selected_workloads(objects, pdb["spec"]["selector"])
        assert target["kind"] == "Deployment"
        assert target["metadata"]["name"] == pdb["metadata"]["name"]
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = find(objects, ref["kind"], ref["name"])
        assert target["apiVersion"] == ref["apiVersion"]
    for policy in of_kind(objects, "NetworkPolicy"):
        assert selected_workloads(objects, policy["spec"]["podSelector"]), key(policy)
        for peer in _peers(policy):
            if "podSelector" in peer and "namespaceSelector" not in peer:
                assert selected_workloads(objects, peer["podSelector"]), (key(policy), peer)


def _peers(policy: Obj) -> list[Obj]:
    rules = [*policy["spec"].get("ingress", []), *policy["spec"].get("egress", [])]
    return [peer for rule in rules for peer in [*rule.get("from", []), *rule.get("to", [])]]


def _allowed_ports(rules: list[Obj], peer_labels: dict[str, str] | None) -> set[int]:
    """Ports a list of ingress/egress rules opens to (or from) pods with
    these labels in the same namespace; None means any address."""
    ports: set[int] = set()
    for rule in rules:
        peers = [*rule.get("from", []), *rule.get("to", [])]
        if peers and peer_labels is None:
            continue
        if peers and not any(
            "namespaceSelector" not in p
            and "ipBlock" not in p
            and selects(p.get("podSelector", {}), peer_labels or {})
            for p in peers
        ):
            continue
        ports.update(p["port"] for p in rule.get("ports", []))
    return ports


def edge_config_map(objects: list[Obj]) -> Obj:
    """The edge's generated ConfigMap (aster-edge-config-<hash>)."""
    return generated(objects, "ConfigMap", EDGE_CONFIG)


def edge_envoy_config(objects: list[Obj]) -> dict[str, Any]:
    """The envoy.yaml the edge pods run, parsed."""
    text = config_map_files(edge_config_map(objects))[k8s.CONFIG_KEY]
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def _grpc_cluster(envoy: dict[str, Any]) -> dict[str, Any]:
    [cluster] = [c for c in envoy["static_resources"]["clusters"] if c["name"] == "aster_grpc"]
    return cluster  # type: ignore[no-any-return]


def _http_filters(envoy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [listener] = envoy["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return {f["name"]: f["typed_config"] for f in manager["http_filters"]}


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_ports_probes_and_services_agree(name: str) -> None:
    objects = built(name)
    server = container(objects, "Deployment", SERVER)
    edge = container(objects, "Deployment", EDGE)
    server_env = effective_env(objects, server)
    envoy = edge_envoy_config(objects)
    grpc_port = resolve_port(server, "grpc")
    metrics_port = resolve_port(server, "metrics")
    http_port = resolve_port(edge, "http")

    # The settings and Envoy's listener name the ports the containers declare;
    # Envoy's admin interface is on the pod's loopback, on another port.
    assert int(server_env["ASTER_GRPC_PORT"]) == grpc_port == 50051
    assert int(server_env["ASTER_METRICS_PORT"]) == metrics_port
    [listener] = envoy["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": http_port}
    assert http_port == 8080
    admin = envoy["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1"
    assert admin["port_value"] != http_port
    # Prometheus reaches the metrics endpoint from outside the pod.
    assert server_env["ASTER_METRICS_HOST"] == "0.0.0.0"
    template = find(objects, "Deployment", SERVER)["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port

    # Native gRPC probes on the server's port: liveness on its own health
    # name, readiness on the server as a whole.
    assert server["livenessProbe"]["grpc"] == {"port": grpc_port, "service": LIVENESS_SERVICE}
    assert server["startupProbe"]["grpc"] == {"port": grpc_port, "service": LIVENESS_SERVICE}
    assert server["readinessProbe"]["grpc"] == {"port": grpc_port, "service": ""}
    assert LIVENESS_SERVICE not in service_names()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert resolve_port(edge, edge[probe]["tcpSocket"]["port"]) == http_port

    # Every Service port leads to a port of the pods it selects.
    for service in of_kind(objects, "Service"):
        for target in selected_workloads(objects, service["spec"]["selector"]):
            for port in service["spec"]["ports"]:
                [only] = containers(target)
                assert resolve_port(only, port["targetPort"]) == port["port"]

    # The edge balances each request across every server pod: its upstream
    # cluster is the headless Service's name and gRPC port, re-resolved
    # (STRICT_DNS), over HTTP/2.
    headless = find(objects, "Service", HEADLESS)
    assert headless["spec"]["clusterIP"] == "None"
    assert not headless["spec"].get("publishNotReadyAddresses", False)
    cluster = _grpc_cluster(envoy)
    assert cluster["type"] == "STRICT_DNS"
    assert cluster["lb_policy"] == "ROUND_ROBIN"
    [endpoints] = cluster["load_assignment"]["endpoints"]
    [endpoint] = endpoints["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert address["address"] == HEADLESS
    grpc_service_port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc")
    assert address["port_value"] == grpc_service_port
    protocol = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in protocol["explicit_http_config"]

    # Network policies let the edge reach the gRPC port and Prometheus the
    # metrics port, and nothing else in.
    server_policy = find(objects, "NetworkPolicy", SERVER)["spec"]
    edge_policy = find(objects, "NetworkPolicy", EDGE)["spec"]
    edge_labels = pod_labels(find(objects, "Deployment", EDGE))
    server_labels = pod_labels(find(objects, "Deployment", SERVER))
    assert _allowed_ports(server_policy["ingress"], edge_labels) == {grpc_port}
    assert _allowed_ports(server_policy["ingress"], None) == set()
    metrics_rule = next(
        r for r in server_policy["ingress"] if r["from"][0].get("namespaceSelector")
    )
    assert [p["port"] for p in metrics_rule["ports"]] == [metrics_port]
    assert grpc_port in _allowed_ports(edge_policy["egress"], server_labels)
    assert _allowed_ports(edge_policy["ingress"], None) == {http_port}


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_server_egress_is_dns_databases_and_https(name: str) -> None:
    objects = built(name)
    egress = find(objects, "NetworkPolicy", SERVER)["spec"]["egress"]
    opened = {(p["port"], p.get("protocol", "TCP")) for rule in egress for p in rule["ports"]}
    assert opened == {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (6379, "TCP"), (443, "TCP")}
    dns = next(r for r in egress if any(p["port"] == 53 for p in r["ports"]))
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    migrate = maybe(objects, "NetworkPolicy", MIGRATE)
    if migrate is not None:
        assert "ingress" not in migrate["spec"]
        ports = {p["port"] for rule in migrate["spec"]["egress"] for p in rule["ports"]}
        assert ports == {53, 5432}


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_config_maps_and_env_hold_only_real_settings(name: str) -> None:
    """ConfigMaps read as environments hold ASTER_* settings only (the edge's
    holds files, tests/k8s/test_edge_config_map.py)."""
    objects = built(name)
    fields = set(Settings.model_fields)
    env_sources = {
        source["configMapRef"]["name"]
        for workload in workloads(objects)
        for entry in containers(workload)
        for source in entry.get("envFrom", [])
    }
    assert edge_config_map(objects)["metadata"]["name"] not in env_sources
    for config_map in of_kind(objects, "ConfigMap"):
        if config_map["metadata"]["name"] not in env_sources:
            continue
        for variable, value in config_map["data"].items():
            assert variable.startswith("ASTER_"), variable
            assert variable.removeprefix("ASTER_").lower() in fields, variable
            assert isinstance(value, str), variable
    for workload in workloads(objects):
        for entry in containers(workload):
            for item in entry.get("env", []):
                if item["name"].startswith("ASTER_"):
                    assert item["name"].removeprefix("ASTER_").lower() in fields, item["name"]


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_every_referenced_config_map_and_secret_key_exists(name: str) -> None:
    objects = built(name)
    secret = secret_example()
    assert secret["metadata"]["name"] == SECRET_NAME
    for workload in workloads(objects):
        for volume in pod_spec(workload)["volumes"]:  # type: ignore[index]
            if "configMap" in volume:
                source = volume["configMap"]
                keys = config_map_files(find(objects, "ConfigMap", source["name"]))
                for item in source.get("items", []):
                    assert item["key"] in keys, (key(workload), item)
        for entry in containers(workload):
            for source in entry.get("envFrom", []):
                assert set(source) == {"configMapRef"}, "Secrets are referenced key by key"
                find(objects, "ConfigMap", source["configMapRef"]["name"])
            for item in entry.get("env", []):
                ref = item.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    data = config_map_data(objects, ref["configMapKeyRef"]["name"])
                    assert ref["configMapKeyRef"]["key"] in data
                if "secretKeyRef" in ref:
                    secret_ref = ref["secretKeyRef"]
                    assert secret_ref["name"] == SECRET_NAME, item
                    assert secret_ref["key"] in secret["stringData"], item
                    # Required or not is always spelled out (docs/deploy.md
                    # lists which keys each overlay needs).
                    assert "optional" in secret_ref, item


def test_every_key_of_the_example_secret_is_used() -> None:
    used = {
        item["valueFrom"]["secretKeyRef"]["key"]
        for name in BUILDS
        for workload in workloads(built(name))
        for entry in containers(workload)
        for item in entry.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert set(secret_example()["stringData"]) == used
    # The placeholders are values the settings accept.
    values = secret_example()["stringData"]
    settings = settings_from(
        {"ASTER_DATABASE_URL": values["database-url"], "ASTER_REDIS_URL": values["redis-url"]}
    )
    assert settings.storage_backend == "postgresql"


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_each_container_starts_with_valid_settings(name: str) -> None:
    """The environment each container gets is one its command accepts: for
    example production mode with JWTs has the JWT secret."""
    objects = built(name)
    for workload in workloads(objects):
        for entry in containers(workload):
            env = effective_env(objects, entry)
            settings_from(env)
            if "command" not in entry:  # the edge runs Envoy itself
                build_parser().parse_args(entry["args"])
    # The edge's settings file is valid too (`aster gen` renders it).
    settings = k8s.read_settings(EDGE_FILES_DIR / k8s.SETTINGS_FILE)
    assert settings.upstream_addresses == [(HEADLESS, 50051)]


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_server_and_edge_share_the_message_limit(name: str) -> None:
    objects = built(name)
    server = effective_env(objects, container(objects, "Deployment", SERVER))
    limit = int(server["ASTER_MAX_MESSAGE_BYTES"])
    filters = _http_filters(edge_envoy_config(objects))
    assert filters["envoy.filters.http.buffer"]["max_request_bytes"] == limit
    transcoder = filters["envoy.filters.http.grpc_json_transcoder"]
    assert transcoder["max_request_body_size"] == transcoder["max_response_body_size"] == limit


def _quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    text = str(value)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_pods_are_hardened_and_bounded(name: str) -> None:
    objects = built(name)
    images = set()
    for workload in workloads(objects):
        spec = pod_spec(workload)
        assert spec is not None
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] == pod["runAsGroup"] == IMAGE_UID
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        for entry in containers(workload):
            images.add(entry["image"])
            context = entry["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["runAsNonRoot"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            resources = entry["resources"]
            for resource in ("cpu", "memory"):
                request = _quantity(resources["requests"][resource])
                assert request <= _quantity(resources["limits"][resource])
            # The writable paths are emptyDir volumes: the data dir (of the
            # aster commands; the edge runs Envoy) and /tmp. The rest is
            # mounted read-only.
            mounts = {m["mountPath"]: volumes[m["name"]] for m in entry["volumeMounts"]}
            data_dir = effective_env(objects, entry).get("ASTER_DATA_DIR")
            assert data_dir or "command" in entry, key(workload)
            for path in filter(None, (data_dir, "/tmp")):
                assert "emptyDir" in mounts[path], (key(workload), path)
            for mount in entry["volumeMounts"]:
                if "emptyDir" not in volumes[mount["name"]]:
                    assert mount.get("readOnly") is True, (key(workload), mount)
    # One image for the server, the edge and the migrations.
    assert len(images) == 1, images


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_envoy_sheds_load_before_its_memory_limit(name: str) -> None:
    objects = built(name)
    edge = container(objects, "Deployment", EDGE)
    overload = edge_envoy_config(objects)["overload_manager"]
    monitors = {m["name"]: m["typed_config"] for m in overload["resource_monitors"]}
    heap = monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"]
    assert heap < _quantity(edge["resources"]["limits"]["memory"]) * 0.8


def _sleep_seconds(entry: Obj) -> int:
    command = entry["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_shutdown_drains_within_the_grace_period(name: str) -> None:
    objects = built(name)
    deployment = find(objects, "Deployment", SERVER)
    server = container(objects, "Deployment", SERVER)
    env = effective_env(objects, server)
    grace = float(env["ASTER_SHUTDOWN_GRACE_S"])
    drain = float(env["ASTER_SHUTDOWN_DRAIN_S"])
    pre_stop = _sleep_seconds(server)
    # Long enough for the endpoint removal and Envoy's DNS refresh (5 s).
    assert pre_stop >= 5
    # Longer than two of the edge's 2 s health checks.
    assert drain >= 4
    # The preStop sleep, the drain and the server's own grace, with room to close.
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= (
        pre_stop + drain + grace + 5
    )
    edge_deployment = find(objects, "Deployment", EDGE)
    edge_sleep = _sleep_seconds(container(objects, "Deployment", EDGE))
    assert edge_deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > (
        edge_sleep
    )
    # Rolling updates never drop below the wanted count.
    for item in (deployment, edge_deployment):
        assert item["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_commands_are_aster_commands(name: str) -> None:
    objects = built(name)
    assert container(objects, "Deployment", SERVER)["args"] == ["serve"]
    # The edge runs Envoy from the image's virtualenv (test_dockerfile.py) on
    # the mounted config, with the arguments `aster edge` gives it.
    edge = container(objects, "Deployment", EDGE)
    assert edge["command"] == [EDGE_ENVOY]
    assert edge["args"] == envoy_args(k8s.CONFIG_PATH)
    job = maybe(objects, "Job", MIGRATE)
    if job is not None:
        migrate = container(objects, "Job", MIGRATE)
        assert migrate["args"] == ["db", "upgrade"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        # It migrates the database the servers use.
        server = container(objects, "Deployment", SERVER)
        ref = _secret_refs(migrate)["ASTER_DATABASE_URL"]
        assert ref == _secret_refs(server)["ASTER_DATABASE_URL"]
        assert ref["optional"] is False
        assert "envFrom" not in migrate, "the Job runs before the ConfigMaps exist"
    for workload in workloads(objects):
        for entry in containers(workload):
            if entry is not edge:
                assert "command" not in entry, "the image's entrypoint is `aster`"


def _secret_refs(entry: Obj) -> dict[str, dict[str, Any]]:
    return {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in entry.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }


# --- The overlays -------------------------------------------------------------


def test_dev_is_one_server_on_sqlite_without_redis_or_auth() -> None:
    objects = built("dev")
    assert find(objects, "Deployment", SERVER)["spec"]["replicas"] == 1
    assert find(objects, "Deployment", EDGE)["spec"]["replicas"] == 1
    assert not of_kind(objects, "HorizontalPodAutoscaler")
    assert not of_kind(objects, "Job")
    server = container(objects, "Deployment", SERVER)
    env = effective_env(objects, server)
    assert "ASTER_DATABASE_URL" not in env
    assert "ASTER_REDIS_URL" not in env
    settings = settings_from(env)
    assert settings.storage_backend == "sqlite"
    assert settings.auth_methods == ()
    assert settings.mode.value == "development"
    # SQLite lives in the data dir, an emptyDir.
    assert str(settings.data_dir) == "/data"
    # Nothing required from the Secret: dev runs without one.
    assert all(ref["optional"] for ref in _secret_refs(server).values())
    _check_namespace(objects, "aster-dev")


def test_prod_is_three_replicas_on_postgresql_and_redis_with_auth() -> None:
    objects = built("prod")
    deployment = find(objects, "Deployment", SERVER)
    hpa = find(objects, "HorizontalPodAutoscaler", SERVER)
    # The HPA owns the replica count (3 at least); a fixed `replicas` would
    # reset it at every apply.
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["maxReplicas"] > 3
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    server = container(objects, "Deployment", SERVER)
    settings = settings_from(effective_env(objects, server))
    assert settings.mode.value == "production"
    assert settings.auth_mode == "api_key,jwt"
    assert settings.storage_backend == "postgresql"
    assert settings.redis_url
    refs = _secret_refs(server)
    for variable in ("ASTER_DATABASE_URL", "ASTER_REDIS_URL", "ASTER_JWT_SECRET"):
        assert refs[variable]["optional"] is False, variable
    find(objects, "Job", MIGRATE)
    assert server["image"].startswith("registry.example.com/")
    pdb = find(objects, "PodDisruptionBudget", SERVER)
    assert pdb["spec"]["maxUnavailable"] == 1
    _check_namespace(objects, "aster")


def _check_namespace(objects: list[Obj], namespace: str) -> None:
    [ns] = of_kind(objects, "Namespace")
    assert ns["metadata"]["name"] == namespace
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, key(obj)


def test_base_is_the_production_shape() -> None:
    """The base alone is safe: production mode and authentication on."""
    objects = built("base")
    env = effective_env(objects, container(objects, "Deployment", SERVER))
    settings = settings_from(env)
    assert settings.mode.value == "production"
    assert settings.auth_methods
    for doc_path in (K8S_DIR / "base").glob("*.yaml"):
        for doc in load_documents(doc_path):
            assert "namespace" not in doc.get("metadata", {}), doc_path
