"""Renders envoy/envoy.yaml from the settings: ports, upstreams, CORS, the
per-client rate limit and the hardening limits (docs/edge.md)."""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from aster.server.config import Settings
from aster.server.rpc.catalog import service_names


def template_text() -> str:
    """envoy/envoy.yaml, shipped in the package as `aster.envoy`."""
    return (resources.files("aster.envoy") / "envoy.yaml").read_text()


UNARY_TIMEOUT_S = 60
ROUTE_INDENT = " " * 24
VIRTUAL_HOST_INDENT = " " * 22
FILTER_INDENT = " " * 18
# Hardening limits that have no setting: request headers (431 past it) and the
# client connections' buffers (whole messages still get max_message_bytes
# from the buffer and transcoder filters).
MAX_REQUEST_HEADERS_KB = 64
CONNECTION_BUFFER_BYTES = 32 * 1024
# Per-client-IP token buckets the rate limiter keeps (least recently used
# addresses are dropped past this).
RATE_LIMIT_MAX_CLIENTS = 10_000


def descriptor_path() -> Path:
    """The descriptor set generated next to the Python stubs."""
    return Path(str(resources.files("aster.v1") / "descriptor.binpb"))


def _methods(path: Path) -> list[tuple[str, descriptor_pb2.MethodDescriptorProto]]:
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    wanted = set(service_names())
    return [
        (f"/{file.package}.{service.name}/{method.name}", method)
        for file in files.file
        for service in file.service
        if f"{file.package}.{service.name}" in wanted
        for method in service.method
    ]


def streaming_methods(path: Path) -> list[str]:
    """gRPC paths (`/pkg.Service/Method`) of every server-streaming RPC."""
    return sorted(p for p, m in _methods(path) if m.server_streaming)


# googleapis-common-protos types the extension loosely.
_HTTP_RULE: Any = annotations_pb2.http


def idempotent_methods(path: Path) -> list[str]:
    """gRPC paths of the unary RPCs bound to HTTP GET: reads, safe to retry."""
    result = []
    for full, method in _methods(path):
        if method.server_streaming or not method.options.HasExtension(_HTTP_RULE):
            continue
        if method.options.Extensions[_HTTP_RULE].WhichOneof("pattern") == "get":
            result.append(full)
    return sorted(result)


# Envoy's own error replies, by HTTP status, get the gRPC code that a
# transcoded error with that status would carry (431, headers too large, is
# a resource limit like 413).
LOCAL_REPLY_GRPC_CODES = {
    400: 3,
    401: 16,
    403: 7,
    404: 5,
    413: 8,
    429: 8,
    431: 8,
    503: 14,
    504: 4,
}
UNKNOWN_CODE = 2
BODY = "%LOCAL_REPLY_BODY%"
# The edge's only own 429 is the per-client rate limit.
RATE_LIMITED_MESSAGE = "too many requests from this client; retry later"
LOCAL_REPLY_MESSAGES = {429: RATE_LIMITED_MESSAGE}
GRPC_LOCAL_REPLY_MESSAGES = {413: "request message too large", 429: RATE_LIMITED_MESSAGE}
# gRPC and gRPC-Web calls, by the content type the edge recorded before the
# transcoder turned REST calls into gRPC (envoy.yaml, header_mutation).
_GRPC_CONTENT_TYPE = {"name": "x-edge-content-type", "string_match": {"prefix": "application/grpc"}}
GRPC_REQUEST: dict[str, Any] = {"header_filter": {"header": _GRPC_CONTENT_TYPE}}
NOT_GRPC_REQUEST: dict[str, Any] = {
    "header_filter": {
        "header": {
            **_GRPC_CONTENT_TYPE,
            "invert_match": True,
            "treat_missing_header_as_empty": True,
        }
    }
}
HTTP_FILTER_TYPES = "type.googleapis.com/envoy.extensions.filters.http"

# CORS: what browsers may send and read.
CORS_ALLOW_METHODS = ("GET", "POST", "PATCH", "DELETE", "OPTIONS")
CORS_ALLOW_HEADERS = (
    "content-type",
    "authorization",
    "x-api-key",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "x-request-id",
)
CORS_EXPOSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id")
CORS_MAX_AGE_S = 86_400

# One JSON object per request. Never add credential headers (authorization,
# x-api-key) here: tests/e2e/test_edge_features.py checks they stay out.
ACCESS_LOG_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    # The transcoder turns every REST call into a POST; the client's method
    # is kept in x-envoy-original-method.
    "method": "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%",
    # The client's path; `grpc_path` is the gRPC method it was routed to.
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):512%",
    "grpc_path": "%REQ(:PATH):512%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    # The upstream's status, recorded by the Lua filter (Envoy's own
    # GRPC_STATUS guesses from the rewritten REST and gRPC-Web replies).
    "grpc_status": "%DYNAMIC_METADATA(aster.edge:grpc_status)%",
    "response_flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "request_id": "%REQ(X-REQUEST-ID):128%",
    "remote_address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "user_agent": "%REQ(USER-AGENT):256%",
    "upstream_host": "%UPSTREAM_HOST%",
}


def _status_filter(op: str, status: int) -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {
                "op": op,
                "value": {"default_value": status, "runtime_key": f"edge.reply_{status}"},
            }
        }
    }


def _json_mapper(status_filter: dict[str, Any], code: int, message: str) -> dict[str, Any]:
    return {
        # gRPC and gRPC-Web clients get grpc-status and grpc-message instead.
        "filter": {"and_filter": {"filters": [status_filter, NOT_GRPC_REQUEST]}},
        "body_format_override": {
            "json_format": {"code": code, "message": message, "details": []},
            "content_type": "application/json",
        },
    }


def _grpc_mapper(status: int, code: int, message: str) -> dict[str, Any]:
    # gRPC-Web calls would otherwise get an HTTP error that the gRPC-Web
    # filter turns into UNAVAILABLE or UNKNOWN, and plain gRPC ones UNKNOWN:
    # both get a trailers-only reply with the code REST clients see.
    def header(key: str, value: str) -> dict[str, Any]:
        return {
            "header": {"key": key, "value": value},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }

    return {
        "filter": {"and_filter": {"filters": [_status_filter("EQ", status), GRPC_REQUEST]}},
        "status_code": 200,
        "headers_to_add": [header("grpc-status", str(code)), header("grpc-message", message)],
        "body_format_override": {"text_format_source": {"inline_string": ""}},
    }


def _local_reply_mappers() -> str:
    # First match wins: gRPC calls over a limit, each known status, then
    # every other error as UNKNOWN.
    grpc = [
        _grpc_mapper(status, LOCAL_REPLY_GRPC_CODES[status], message)
        for status, message in GRPC_LOCAL_REPLY_MESSAGES.items()
    ]
    exact = [
        _json_mapper(_status_filter("EQ", status), code, LOCAL_REPLY_MESSAGES.get(status, BODY))
        for status, code in LOCAL_REPLY_GRPC_CODES.items()
    ]
    fallback = _json_mapper(_status_filter("GE", 400), UNKNOWN_CODE, BODY)
    return json.dumps([*grpc, *exact, fallback])


def _endpoints(addresses: list[tuple[str, int]]) -> str:
    items: list[dict[str, Any]] = [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        for host, port in addresses
    ]
    return json.dumps(items)


def cors_policy(origins: tuple[str, ...]) -> dict[str, Any]:
    """The CORS policy for `origins` (`*` allows any origin)."""
    if "*" in origins:
        matchers: list[dict[str, Any]] = [{"safe_regex": {"regex": ".*"}}]
    else:
        matchers = [{"exact": origin, "ignore_case": True} for origin in origins]
    return {
        "@type": f"{HTTP_FILTER_TYPES}.cors.v3.CorsPolicy",
        "allow_origin_string_match": matchers,
        "allow_methods": ", ".join(CORS_ALLOW_METHODS),
        "allow_headers": ", ".join(CORS_ALLOW_HEADERS),
        "expose_headers": ", ".join(CORS_EXPOSE_HEADERS),
        "max_age": str(CORS_MAX_AGE_S),
        # A preflight from an origin that is not allowed is answered here
        # (without CORS headers) rather than reaching the transcoder.
        "forward_not_matching_preflights": False,
    }


def _fill(rps: float) -> tuple[int, int]:
    # Envoy adds whole tokens at intervals of at least 50 ms, so a rate
    # becomes N tokens every N/rps seconds.
    per_fill = max(1, round(rps))
    return per_fill, max(50, round(per_fill / rps * 1000))


def token_bucket(rps: float) -> dict[str, Any]:
    """A bucket refilled at `rps` tokens a second holding 2 x rps (at least 1)."""
    per_fill, interval_ms = _fill(rps)
    return {
        "max_tokens": max(1, math.floor(2 * rps)),
        "tokens_per_fill": per_fill,
        "fill_interval": f"{interval_ms / 1000:.3f}s",
    }


def rate_limit_filter(rps: float) -> dict[str, Any]:
    """Envoy's local rate limit, one token bucket per client IP address."""
    bucket = token_bucket(rps)
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    retry_after_s = math.ceil(_fill(rps)[1] / 1000)
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": f"{HTTP_FILTER_TYPES}.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "edge_rate_limit",
            "filter_enabled": always,
            "filter_enforced": always,
            # The descriptor below always matches (every TCP client has an
            # address); this bucket is only a fallback.
            "token_bucket": bucket,
            "always_consume_default_token_bucket": False,
            "rate_limits": [{"actions": [{"remote_address": {}}]}],
            # An entry without a value is a wildcard: one bucket per address,
            # the least recently used dropped past RATE_LIMIT_MAX_CLIENTS.
            "descriptors": [{"entries": [{"key": "remote_address"}], "token_bucket": bucket}],
            "max_dynamic_descriptors": RATE_LIMIT_MAX_CLIENTS,
            "rate_limited_as_resource_exhausted": True,
            "response_headers_to_add": [
                {
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    "header": {"key": "retry-after", "value": str(retry_after_s)},
                }
            ],
        },
    }


UNBUFFERED: dict[str, Any] = {
    "envoy.filters.http.buffer": {
        "@type": f"{HTTP_FILTER_TYPES}.buffer.v3.BufferPerRoute",
        "disabled": True,
    }
}

CORS_FILTER: dict[str, Any] = {
    "name": "envoy.filters.http.cors",
    "typed_config": {"@type": f"{HTTP_FILTER_TYPES}.cors.v3.Cors"},
}


@dataclass(frozen=True)
class EdgeConfig:
    """Everything the template needs."""

    listen_host: str
    http_port: int
    admin_port: int
    upstreams: list[tuple[str, int]]
    metrics: tuple[str, int]
    max_body_bytes: int
    # Allowed CORS origins; empty means CORS is off.
    cors_origins: tuple[str, ...] = ()
    # Requests per second per client IP; 0 means no rate limit.
    rate_limit_rps: float = 0.0
    max_concurrent_streams: int = 100
    max_connections: int = 10_000
    max_heap_bytes: int = 1024 * 1024 * 1024


def edge_config(settings: Settings) -> EdgeConfig:
    """The edge configuration implied by the server settings."""
    return EdgeConfig(
        listen_host=settings.http_host,
        http_port=settings.http_port,
        admin_port=settings.envoy_admin_port,
        upstreams=settings.upstream_addresses,
        metrics=(settings.metrics_host, settings.metrics_port),
        max_body_bytes=settings.max_message_bytes,
        cors_origins=tuple(o.rstrip("/") for o in settings.cors_origin_list),
        rate_limit_rps=settings.edge_rate_limit_rps,
        max_concurrent_streams=settings.edge_max_concurrent_streams,
        max_connections=settings.edge_max_connections,
        max_heap_bytes=settings.edge_max_heap_bytes,
    )


def _health_route(config: EdgeConfig) -> str:
    # Health checks (load balancers, Kubernetes probes) are never rate
    # limited: behind a load balancer they share its address with the
    # traffic. A per-route config without filter_enabled turns the filter off.
    if config.rate_limit_rps <= 0:
        return ""
    unlimited = {
        "envoy.filters.http.local_ratelimit": {
            "@type": f"{HTTP_FILTER_TYPES}.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "edge_health",
            "token_bucket": token_bucket(config.rate_limit_rps),
        }
    }
    return (
        f"{ROUTE_INDENT}- match: {{path: /health}}\n"
        f"{ROUTE_INDENT}  route: {{cluster: aster_grpc, timeout: {UNARY_TIMEOUT_S}s}}\n"
        f"{ROUTE_INDENT}  typed_per_filter_config: {json.dumps(unlimited)}"
    )


def _filter_items(filters: list[dict[str, Any]]) -> str:
    return "\n".join(f"{FILTER_INDENT}- {json.dumps(f)}" for f in filters)


RETRIES = 2


def _retried_route() -> dict[str, Any]:
    # `cancelled` too: a stopping server cancels the calls it had not yet
    # handed to a handler (grpc/grpc#41785); a read is safe to send again.
    return {
        "cluster": "aster_grpc",
        "timeout": f"{UNARY_TIMEOUT_S}s",
        "retry_policy": {
            "retry_on": "unavailable,cancelled,reset,connect-failure,refused-stream",
            "num_retries": RETRIES,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": "type.googleapis.com/"
                        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": 3,
        },
    }


def _virtual_host_filter_config(config: EdgeConfig) -> str:
    if not config.cors_origins:
        return ""
    per_filter = {"envoy.filters.http.cors": cors_policy(config.cors_origins)}
    return f"{VIRTUAL_HOST_INDENT}typed_per_filter_config: {json.dumps(per_filter)}"


def render(
    config: EdgeConfig, descriptor: Path | None = None, descriptor_location: str | None = None
) -> str:
    """The Envoy configuration as YAML text. The routes come from the
    descriptor set at `descriptor`; Envoy loads it from `descriptor_location`
    (by default the same path: elsewhere when the config is rendered for
    another machine, such as a Kubernetes ConfigMap mounted in the pod)."""
    descriptor = descriptor or descriptor_path()
    # Routes are matched after transcoding (the transcoder clears the route
    # cache), so streaming RPCs are matched on their gRPC paths and get no
    # timeout; everything else gets the unary timeout. gRPC and gRPC-Web
    # calls of streaming RPCs match here before transcoding too, and are not
    # buffered whole.
    routes = "\n".join(
        [
            f"{ROUTE_INDENT}- match: {{path: {method}}}\n"
            f"{ROUTE_INDENT}  route: {{cluster: aster_grpc, timeout: 0s}}\n"
            f"{ROUTE_INDENT}  typed_per_filter_config: {json.dumps(UNBUFFERED)}"
            for method in streaming_methods(descriptor)
        ]
        # Reads are retried on another replica when one is unavailable;
        # nothing that changes state is.
        + [
            f"{ROUTE_INDENT}- match: {{path: {method}}}\n"
            f"{ROUTE_INDENT}  route: {json.dumps(_retried_route())}"
            for method in idempotent_methods(descriptor)
        ]
    )
    metrics_host = "127.0.0.1" if config.metrics[0] in ("0.0.0.0", "") else config.metrics[0]
    template = string.Template(template_text())
    return template.substitute(
        admin_port=config.admin_port,
        max_heap_bytes=config.max_heap_bytes,
        max_connections=config.max_connections,
        connection_buffer_bytes=CONNECTION_BUFFER_BYTES,
        max_request_headers_kb=MAX_REQUEST_HEADERS_KB,
        max_concurrent_streams=config.max_concurrent_streams,
        access_log_format=json.dumps(ACCESS_LOG_FORMAT),
        local_reply_mappers=_local_reply_mappers(),
        listen_host=config.listen_host,
        http_port=config.http_port,
        virtual_host_filter_config=_virtual_host_filter_config(config),
        health_route=_health_route(config),
        streaming_routes=routes,
        unary_timeout_s=UNARY_TIMEOUT_S,
        cors_filter=_filter_items([CORS_FILTER] if config.cors_origins else []),
        rate_limit_filter=_filter_items(
            [rate_limit_filter(config.rate_limit_rps)] if config.rate_limit_rps > 0 else []
        ),
        descriptor_path=descriptor_location or str(descriptor),
        services=json.dumps(service_names()),
        max_body_bytes=config.max_body_bytes,
        grpc_endpoints=_endpoints(config.upstreams),
        metrics_endpoints=_endpoints([(metrics_host, config.metrics[1])]),
    )
