"""Renders envoy/envoy.yaml for a set of ports and upstreams."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

from aster.server.config import Settings
from aster.server.rpc.catalog import service_names

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml"
UNARY_TIMEOUT_S = 60
ROUTE_INDENT = " " * 24


def descriptor_path() -> Path:
    """The descriptor set generated next to the Python stubs."""
    return Path(str(resources.files("aster.v1") / "descriptor.binpb"))


def streaming_methods(path: Path) -> list[str]:
    """gRPC paths (`/pkg.Service/Method`) of every server-streaming RPC."""
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    wanted = set(service_names())
    result: list[str] = []
    for file in files.file:
        for service in file.service:
            full = f"{file.package}.{service.name}"
            if full in wanted:
                result.extend(f"/{full}/{m.name}" for m in service.method if m.server_streaming)
    return sorted(result)


# Envoy's own error replies, by HTTP status, get the gRPC code that a
# transcoded error with that status would carry.
LOCAL_REPLY_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 429: 8, 503: 14, 504: 4}
UNKNOWN_CODE = 2


def _local_reply_mappers() -> str:
    def mapper(op: str, status: int, code: int) -> dict[str, Any]:
        return {
            "filter": {
                "status_code_filter": {
                    "comparison": {
                        "op": op,
                        "value": {"default_value": status, "runtime_key": f"edge.reply_{status}"},
                    }
                }
            },
            "body_format_override": {
                "json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%", "details": []},
                "content_type": "application/json",
            },
        }

    exact = [mapper("EQ", status, code) for status, code in LOCAL_REPLY_GRPC_CODES.items()]
    return json.dumps([*exact, mapper("GE", 400, UNKNOWN_CODE)])


def _endpoints(addresses: list[tuple[str, int]]) -> str:
    items: list[dict[str, Any]] = [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        for host, port in addresses
    ]
    return json.dumps(items)


@dataclass(frozen=True)
class EdgeConfig:
    """Everything the template needs."""

    listen_host: str
    http_port: int
    admin_port: int
    upstreams: list[tuple[str, int]]
    metrics: tuple[str, int]
    max_body_bytes: int


def edge_config(settings: Settings) -> EdgeConfig:
    """The edge configuration implied by the server settings."""
    return EdgeConfig(
        listen_host=settings.http_host,
        http_port=settings.http_port,
        admin_port=settings.envoy_admin_port,
        upstreams=settings.upstream_addresses,
        metrics=(settings.metrics_host, settings.metrics_port),
        max_body_bytes=settings.max_message_bytes,
    )


def render(config: EdgeConfig, descriptor: Path | None = None) -> str:
    """The Envoy configuration as YAML text."""
    descriptor = descriptor or descriptor_path()
    # Routes are matched after transcoding (the transcoder clears the route
    # cache), so streaming RPCs are matched on their gRPC paths and get no
    # timeout; everything else gets the unary timeout.
    routes = "\n".join(
        f"{ROUTE_INDENT}- match: {{path: {method}}}\n"
        f"{ROUTE_INDENT}  route: {{cluster: aster_grpc, timeout: 0s}}"
        for method in streaming_methods(descriptor)
    )
    metrics_host = "127.0.0.1" if config.metrics[0] in ("0.0.0.0", "") else config.metrics[0]
    template = string.Template(TEMPLATE_PATH.read_text())
    return template.substitute(
        admin_port=config.admin_port,
        local_reply_mappers=_local_reply_mappers(),
        listen_host=config.listen_host,
        http_port=config.http_port,
        streaming_routes=routes,
        unary_timeout_s=UNARY_TIMEOUT_S,
        descriptor_path=str(descriptor),
        services=json.dumps(service_names()),
        max_body_bytes=config.max_body_bytes,
        grpc_endpoints=_endpoints(config.upstreams),
        metrics_endpoints=_endpoints([(metrics_host, config.metrics[1])]),
    )
