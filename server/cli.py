"""The `aster` command: up, serve, edge, gen, db upgrade."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from pydantic import ValidationError

from aster.server.config import Settings

SETTINGS_ARGS = tuple(Settings.model_fields)


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each overrides its ASTER_* variable)")
    for name in SETTINGS_ARGS:
        flags = [f"--{name.replace('_', '-')}"]
        if name == "upstreams":
            flags.append("--upstream")
        group.add_argument(
            *flags,
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"overrides ASTER_{name.upper()}",
        )


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags given."""
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in SETTINGS_ARGS if getattr(args, name, None) is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as err:
        lines = [f"aster: invalid configuration ({err.error_count()} problem(s)):"]
        for problem in err.errors():
            field = ".".join(str(p) for p in problem["loc"]) or "settings"
            lines.append(f"  ASTER_{field.upper()}: {problem['msg']}")
        raise SystemExit("\n".join(lines)) from None


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces `settings` in a child process."""
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            env.pop(f"ASTER_{name.upper()}", None)
        else:
            env[f"ASTER_{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    return env


def cmd_serve(args: argparse.Namespace) -> int:
    """Runs the gRPC server."""
    from aster.server.workers import serve

    return serve(load_settings(args))


def cmd_edge(args: argparse.Namespace) -> int:
    """Runs Envoy in the foreground."""
    from aster.server.edge.render import edge_config
    from aster.server.edge.runner import envoy_command, write_config

    settings = load_settings(args)
    path = write_config(edge_config(settings), settings.data_dir / "edge")
    os.execv(envoy_command(path, settings.log_level)[0], envoy_command(path, settings.log_level))
    return 0  # pragma: no cover - execv does not return


def _wait_edge(port: int, timeout_s: float) -> bool:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    return False


def _wait_healthy(port: int, timeout_s: float) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                time.sleep(0.2)
    return False


def cmd_up(args: argparse.Namespace) -> int:
    """Runs the server and the edge together until Ctrl-C or SIGTERM."""
    from aster.server.edge.render import edge_config
    from aster.server.edge.runner import start_envoy

    settings = load_settings(args)
    server = subprocess.Popen(
        [sys.executable, "-m", "aster.server.cli", "serve"], env=settings_env(settings)
    )
    children: list[subprocess.Popen[bytes]] = [server]

    def stop(_signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not _wait_healthy(settings.grpc_port, 60):
        stop(signal.SIGTERM, None)
        server.wait()
        print("aster: the gRPC server did not become healthy", file=sys.stderr)
        return 1
    children.append(
        start_envoy(edge_config(settings), settings.data_dir / "edge", settings.log_level)
    )
    if not _wait_edge(settings.http_port, 30):
        stop(signal.SIGTERM, None)
        for child in children:
            child.wait()
        print("aster: the Envoy edge did not start", file=sys.stderr)
        return 1
    print(
        "\nAster is up:\n"
        f"  gRPC          localhost:{settings.grpc_port}"
        f"   (grpcurl -plaintext localhost:{settings.grpc_port} list)\n"
        f"  REST and SSE  http://localhost:{settings.http_port}/v1/agents\n"
        f"  health        http://localhost:{settings.http_port}/health\n"
        f"  metrics       http://localhost:{settings.http_port}/metrics\n"
        f"  storage       {settings.storage_backend} ({settings.effective_database_url.split('://')[0]})\n"
        "Ctrl-C stops both.\n",
        flush=True,
    )
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    stop(signal.SIGTERM, None)
    codes = [child.wait() for child in children]
    return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1


def cmd_gen(args: argparse.Namespace) -> int:
    """Regenerates gen/ and the edge's Envoy config of k8s/ (or, with
    --check, reports stale files)."""
    from aster.server import codegen
    from aster.server.edge import k8s

    k8s_dir = codegen.REPO_ROOT / "k8s"
    if args.check:
        stale = [f"gen/{name}" for name in codegen.stale_files()] + [
            path.relative_to(codegen.REPO_ROOT).as_posix()
            for path in k8s.stale_files(k8s_dir, codegen.DESCRIPTOR_PATH)
        ]
        if stale:
            print("aster: generated files are stale; run `make gen`. Differing:", file=sys.stderr)
            for name in stale:
                print(f"  {name}", file=sys.stderr)
            return 1
        print("gen/ and k8s/ are fresh")
        return 0
    codegen.regenerate()
    print("regenerated gen/")
    for path in k8s.write_files(k8s_dir, codegen.DESCRIPTOR_PATH):
        print(f"wrote {path.relative_to(codegen.REPO_ROOT)}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Applies the database migrations."""
    from aster.server.storage import migrate
    from aster.server.storage.database import Database

    settings = load_settings(args)

    async def run() -> str | None:
        database = Database(settings.effective_database_url)
        try:
            await migrate.upgrade(database)
            return await migrate.current_revision(database)
        finally:
            await database.close()

    print(f"database at revision {asyncio.run(run())}")
    return 0


async def _key_service(settings: Settings) -> tuple[Any, Any]:
    from aster.server.auth.api_key_service import ApiKeyService
    from aster.server.auth.rules import known_scopes, rules_for
    from aster.server.rpc.catalog import SERVICES
    from aster.server.storage import migrate
    from aster.server.storage.api_key_repository import ApiKeyRepository
    from aster.server.storage.database import Database

    database = Database(settings.effective_database_url)
    await migrate.upgrade(database)
    scopes = known_scopes(rules_for([entry.descriptor() for entry in SERVICES]))
    return database, ApiKeyService(ApiKeyRepository(database), scopes)


def cmd_keys(args: argparse.Namespace) -> int:
    """Creates, lists or revokes API keys directly in the database (for
    bootstrapping the first admin key)."""
    from datetime import timedelta

    from aster.server.clock import utcnow
    from aster.server.errors import AsterError

    settings = load_settings(args)

    async def run() -> int:
        database, keys = await _key_service(settings)
        try:
            if args.keys_command == "create":
                expire = (
                    utcnow() + timedelta(days=args.expires_in_days)
                    if args.expires_in_days
                    else None
                )
                key, secret = await keys.create(args.tenant, args.scope, args.name, expire)
                print(
                    f"created {key.id} for tenant {key.tenant} with scopes {' '.join(key.scopes)}"
                )
                print("the key (shown once; Aster stores only its hash):", file=sys.stderr)
                print(secret)
            elif args.keys_command == "list":
                page = await keys.list(args.tenant, True, 1000, "")
                for key in page.items:
                    state = "revoked" if key.revoked else "active"
                    print(f"{key.id}\t{key.prefix}\t{key.tenant}\t{' '.join(key.scopes)}\t{state}")
            else:
                key = await keys.revoke(args.id)
                print(f"revoked {key.id}")
            return 0
        except AsterError as err:
            print(f"aster: {err.message}", file=sys.stderr)
            return 2
        finally:
            await database.close()

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `aster`."""
    parser = argparse.ArgumentParser(prog="aster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, text in (
        ("up", cmd_up, "run the gRPC server and the Envoy edge"),
        ("serve", cmd_serve, "run the gRPC server only"),
        ("edge", cmd_edge, "run the Envoy edge only"),
    ):
        sub = commands.add_parser(name, help=text)
        _add_settings_flags(sub)
        sub.set_defaults(handler=handler)
    gen = commands.add_parser(
        "gen", help="regenerate gen/ from proto/, and the Envoy config of k8s/ (edge)"
    )
    gen.add_argument(
        "--check", action="store_true", help="only report whether gen/ or k8s/ is stale"
    )
    gen.set_defaults(handler=cmd_gen)
    db = commands.add_parser("db", help="database administration")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply migrations")
    _add_settings_flags(upgrade)
    upgrade.set_defaults(handler=cmd_db_upgrade)
    keys = commands.add_parser("keys", help="manage API keys (bootstrapping)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--scope", action="append", required=True, help="repeat for each scope")
    create.add_argument("--name", default="", help="a display name")
    create.add_argument("--expires-in-days", type=float, default=0)
    listing = key_commands.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant", default="")
    revoke = key_commands.add_parser("revoke", help="revoke a key")
    revoke.add_argument("id")
    for sub in (create, listing, revoke):
        _add_settings_flags(sub)
        sub.set_defaults(handler=cmd_keys)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `aster` console script."""
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
