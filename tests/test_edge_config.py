"""The rendered Envoy configuration validates and routes streams without timeouts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from aster.server.app import MAX_CONNECTION_AGE_GRACE_MS, MAX_CONNECTION_AGE_MS, server_options
from aster.server.config import Settings
from aster.server.edge.render import (
    ACCESS_LOG_FORMAT,
    descriptor_path,
    edge_config,
    render,
    streaming_methods,
    token_bucket,
)
from aster.server.edge.runner import envoy_binary
from aster.server.rpc.catalog import service_names


def rendered(**settings: object) -> str:
    return render(edge_config(Settings(**settings)))  # type: ignore[arg-type]


def test_envoy_accepts_the_rendered_config(tmp_path: Path) -> None:
    validate(tmp_path, rendered(upstreams="127.0.0.1:50061,127.0.0.1:50062"))


def test_streaming_routes_have_no_timeout_and_unary_ones_do() -> None:
    config = yaml.safe_load(rendered())
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    streaming = {r["match"].get("path"): r["route"]["timeout"] for r in routes}
    methods = streaming_methods(descriptor_path())
    assert "/aster.v1.AgentService/Chat" in methods
    assert "/aster.v1.AgentService/StreamRun" in methods
    for method in methods:
        assert streaming[method] == "0s"
    assert routes[-1]["match"] == {"prefix": "/"}
    assert routes[-1]["route"]["timeout"] != "0s"


def test_admin_binds_loopback_only_and_upstreams_are_listed() -> None:
    config = yaml.safe_load(rendered(upstreams="10.0.0.1:1,10.0.0.2:2"))
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    cluster = config["static_resources"]["clusters"][0]
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [1, 2]


def validate(tmp_path: Path, text: str) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def filter_names(config: dict[str, Any]) -> list[str]:
    return [f["name"].removeprefix("envoy.filters.http.") for f in manager(config)["http_filters"]]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"cors_origins": "https://app.example.com, https://admin.example.com/"},
        {"cors_origins": "*", "edge_rate_limit_rps": 0.5},
        {"cors_origins": "https://app.example.com", "edge_rate_limit_rps": 2},
        {"edge_rate_limit_rps": 1000.5, "edge_max_concurrent_streams": 7},
    ],
    ids=["defaults", "cors", "cors-any-slow-limit", "cors-and-limit", "fast-limit"],
)
def test_envoy_accepts_every_feature_combination(tmp_path: Path, settings: dict[str, Any]) -> None:
    validate(tmp_path, rendered(**settings))


def test_cors_and_rate_limit_are_off_by_default() -> None:
    config = yaml.safe_load(rendered())
    assert filter_names(config) == [
        "grpc_web",
        "header_mutation",
        "buffer",
        "grpc_json_transcoder",
        "lua",
        "router",
    ]
    virtual_host = manager(config)["route_config"]["virtual_hosts"][0]
    assert "typed_per_filter_config" not in virtual_host


def test_cors_policy_from_the_origins() -> None:
    config = yaml.safe_load(
        rendered(cors_origins="https://app.example.com, https://b.example.com/")
    )
    assert filter_names(config)[:2] == ["cors", "grpc_web"]
    virtual_host = manager(config)["route_config"]["virtual_hosts"][0]
    policy = virtual_host["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert [m["exact"] for m in policy["allow_origin_string_match"]] == [
        "https://app.example.com",
        "https://b.example.com",
    ]
    assert policy["allow_methods"] == "GET, POST, PATCH, DELETE, OPTIONS"
    assert "x-grpc-web" in policy["allow_headers"]
    assert "grpc-status-details-bin" in policy["expose_headers"]
    assert policy["max_age"] == "86400"

    anything = yaml.safe_load(rendered(cors_origins="*"))
    virtual_host = manager(anything)["route_config"]["virtual_hosts"][0]
    policy = virtual_host["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["allow_origin_string_match"] == [{"safe_regex": {"regex": ".*"}}]


def test_rate_limit_is_per_client_address_after_grpc_web() -> None:
    config = yaml.safe_load(rendered(edge_rate_limit_rps=5))
    names = filter_names(config)
    assert names.index("grpc_web") < names.index("local_ratelimit") < names.index("router")
    limit = manager(config)["http_filters"][names.index("local_ratelimit")]["typed_config"]
    assert limit["rate_limits"] == [{"actions": [{"remote_address": {}}]}]
    (descriptor,) = limit["descriptors"]
    assert descriptor["entries"] == [{"key": "remote_address"}]
    assert descriptor["token_bucket"] == {
        "max_tokens": 10,
        "tokens_per_fill": 5,
        "fill_interval": "1.000s",
    }


def test_health_checks_are_exempt_from_the_rate_limit() -> None:
    def health_routes(**settings: object) -> list[dict[str, Any]]:
        config = yaml.safe_load(rendered(**settings))
        routes = manager(config)["route_config"]["virtual_hosts"][0]["routes"]
        return [r for r in routes if r["match"].get("path") == "/health"]

    assert health_routes() == []
    (route,) = health_routes(edge_rate_limit_rps=3)
    per_route = route["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    # Without filter_enabled the filter is enabled for 0% of requests.
    assert "filter_enabled" not in per_route
    assert route["route"]["cluster"] == "aster_grpc"


@pytest.mark.parametrize(
    ("rps", "bucket"),
    [
        (2, {"max_tokens": 4, "tokens_per_fill": 2, "fill_interval": "1.000s"}),
        (0.5, {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "2.000s"}),
        (0.1, {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "10.000s"}),
        (2.5, {"max_tokens": 5, "tokens_per_fill": 2, "fill_interval": "0.800s"}),
        (1000, {"max_tokens": 2000, "tokens_per_fill": 1000, "fill_interval": "1.000s"}),
    ],
)
def test_token_bucket_refills_at_the_rate(rps: float, bucket: dict[str, Any]) -> None:
    assert token_bucket(rps) == bucket


def test_hardening_limits_come_from_the_settings() -> None:
    config = yaml.safe_load(
        rendered(
            max_message_bytes=2 * 1024 * 1024,
            edge_max_concurrent_streams=33,
            edge_max_connections=444,
            edge_max_heap_bytes=512 * 1024 * 1024,
        )
    )
    hcm = manager(config)
    assert hcm["use_remote_address"] is True
    assert hcm["generate_request_id"] is True
    assert hcm["preserve_external_request_id"] is True
    assert hcm["always_set_request_id_in_response"] is True
    assert hcm["max_request_headers_kb"] == 64
    assert hcm["http2_protocol_options"]["max_concurrent_streams"] == 33
    filters = {f["name"]: f["typed_config"] for f in hcm["http_filters"]}
    transcoder = filters["envoy.filters.http.grpc_json_transcoder"]
    assert transcoder["max_request_body_size"] == 2 * 1024 * 1024
    assert transcoder["max_response_body_size"] == 2 * 1024 * 1024
    assert filters["envoy.filters.http.buffer"]["max_request_bytes"] == 2 * 1024 * 1024

    overload = config["overload_manager"]
    monitors = {m["name"]: m["typed_config"] for m in overload["resource_monitors"]}
    assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == 512 * 1024**2
    connections = monitors["envoy.resource_monitors.global_downstream_max_connections"]
    assert connections["max_active_downstream_connections"] == 444
    thresholds = {
        a["name"].removeprefix("envoy.overload_actions."): a["triggers"][0]["threshold"]["value"]
        for a in overload["actions"]
    }
    assert thresholds == {"shrink_heap": 0.95, "stop_accepting_requests": 0.98}


def test_streaming_routes_are_not_buffered() -> None:
    routes = manager(yaml.safe_load(rendered()))["route_config"]["virtual_hosts"][0]["routes"]
    for route in routes:
        if route["route"].get("timeout") == "0s":
            per_filter = route["typed_per_filter_config"]["envoy.filters.http.buffer"]
            assert per_filter["disabled"] is True


def test_access_log_is_json_and_never_names_credentials() -> None:
    (log,) = manager(yaml.safe_load(rendered()))["access_log"]
    assert log["name"] == "envoy.access_loggers.stdout"
    fields = log["typed_config"]["log_format"]["json_format"]
    assert fields == ACCESS_LOG_FORMAT
    assert {"start_time", "method", "path", "response_code", "grpc_status", "duration_ms"} <= set(
        fields
    )
    assert {"bytes_received", "bytes_sent", "request_id", "remote_address", "user_agent"} <= set(
        fields
    )
    assert "upstream_host" in fields
    text = json.dumps(fields).lower()
    assert "authorization" not in text
    assert "api-key" not in text
    assert "%req(" in text  # headers are named one by one, never all of them
    assert "%request_headers" not in text


def test_replicas_are_health_checked_every_two_seconds_from_the_start() -> None:
    config = yaml.safe_load(rendered(upstreams="10.0.0.1:50051,10.0.0.2:50051"))
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "aster_grpc"]
    (check,) = cluster["health_checks"]
    # Without no_traffic_interval a new edge checks every 60 s until it has
    # carried traffic, and keeps that timer: a draining replica goes unseen.
    assert check["interval"] == check["no_traffic_interval"] == "2s"
    assert check["grpc_health_check"] == {"service_name": ""}


# --- Retries, outlier detection and health checks --------------------------

# The committed config the Kubernetes edge runs (tests/k8s checks it is fresh).
K8S_ENVOY_YAML = Path(__file__).resolve().parent.parent / "k8s" / "base" / "edge" / "envoy.yaml"


def _configs() -> list[Any]:
    return [
        pytest.param(lambda: yaml.safe_load(rendered()), id="rendered"),
        pytest.param(lambda: yaml.safe_load(K8S_ENVOY_YAML.read_text()), id="k8s"),
    ]


def _http_verbs() -> dict[str, str]:
    """Each RPC's gRPC path and its HTTP binding's verb (`stream` for the
    server-streaming ones)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_path().read_bytes())
    rule: Any = annotations_pb2.http
    verbs = {}
    for file in files.file:
        for service in file.service:
            for method in service.method:
                path = f"/{file.package}.{service.name}/{method.name}"
                if f"{file.package}.{service.name}" not in service_names():
                    continue
                assert method.options.HasExtension(rule), path
                binding = method.options.Extensions[rule]
                verbs[path] = "stream" if method.server_streaming else binding.WhichOneof("pattern")
    return verbs


def _route_for(routes: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """The route Envoy picks for a gRPC path (the first that matches; routes
    are matched after transcoding, on the gRPC path)."""
    for route in routes:
        match = route["match"]
        if match.get("path") == path or ("prefix" in match and path.startswith(match["prefix"])):
            action: dict[str, Any] = route["route"]
            return action
    raise AssertionError(f"no route for {path}")


@pytest.mark.parametrize("load", _configs())
def test_only_reads_are_retried(load: Any) -> None:
    """GET-bound unary RPCs are retried on another replica; writes (POST,
    PATCH, DELETE) never are (a retried write could apply twice), and
    streams are neither retried nor timed out."""
    config = load()
    virtual_host = manager(config)["route_config"]["virtual_hosts"][0]
    # No retry policy that would cover every route.
    assert "retry_policy" not in virtual_host
    assert "retry_policy" not in manager(config)["route_config"]
    routes = virtual_host["routes"]
    verbs = _http_verbs()
    assert set(verbs.values()) == {"get", "post", "patch", "delete", "stream"}
    for path, verb in sorted(verbs.items()):
        route = _route_for(routes, path)
        if verb == "get":
            policy = route["retry_policy"]
            assert route["timeout"] == "60s", path
            assert "unavailable" in policy["retry_on"].split(",")
            assert policy["num_retries"] >= 1
            [predicate] = policy["retry_host_predicate"]
            assert predicate["name"] == "envoy.retry_host_predicates.previous_hosts"
        elif verb == "stream":
            assert "retry_policy" not in route, path
            assert route["timeout"] == "0s", path
        else:
            assert "retry_policy" not in route, (path, verb)
            assert route["timeout"] == "60s", path
    # Known examples of each kind.
    assert "retry_policy" in _route_for(routes, "/aster.v1.AgentService/GetAgent")
    for write in ("CreateAgent", "UpdateAgent", "DeleteAgent"):
        assert verbs[f"/aster.v1.AgentService/{write}"] in {"post", "patch", "delete"}
        assert "retry_policy" not in _route_for(routes, f"/aster.v1.AgentService/{write}")


@pytest.mark.parametrize("load", _configs())
def test_upstream_cluster_ejects_failing_replicas(load: Any) -> None:
    config = load()
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "aster_grpc"]
    outlier = cluster["outlier_detection"]
    assert outlier["consecutive_gateway_failure"] >= 1
    assert outlier["consecutive_local_origin_failure"] >= 1
    assert outlier["split_external_local_origin_errors"] is True
    assert outlier["interval"] and outlier["base_ejection_time"]
    # Never eject the whole cluster on a burst of errors.
    assert 0 < outlier["max_ejection_percent"] <= 50


@pytest.mark.parametrize("load", _configs())
def test_upstream_cluster_is_grpc_health_checked(load: Any) -> None:
    config = load()
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "aster_grpc"]
    # gRPC health checks need HTTP/2 to the upstream.
    protocol = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in protocol["explicit_http_config"]
    (check,) = cluster["health_checks"]
    # "" is the server's readiness (NOT_SERVING while draining or while the
    # database or Redis fail).
    assert check["grpc_health_check"] == {"service_name": ""}

    def seconds(value: str) -> float:
        return float(value.removesuffix("s"))

    assert seconds(check["timeout"]) < seconds(check["interval"])
    assert check["unhealthy_threshold"] >= 1
    assert check["healthy_threshold"] >= 1


def test_the_server_ages_connections_out() -> None:
    """The server ends each connection after max_connection_age (with a
    grace for in-flight calls), so clients that bypass the edge reconnect
    and spread over new replicas."""
    options = dict(server_options(Settings()))
    assert options["grpc.max_connection_age_ms"] == MAX_CONNECTION_AGE_MS > 0
    assert options["grpc.max_connection_age_grace_ms"] == MAX_CONNECTION_AGE_GRACE_MS
    # The grace outlasts a run at the default run timeout: a stream ends
    # with its run, not with its connection.
    run_timeout_s = Settings.model_fields["run_timeout_s"].default
    assert run_timeout_s * 1000 <= MAX_CONNECTION_AGE_GRACE_MS
