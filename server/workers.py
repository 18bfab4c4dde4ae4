"""Runs the server as one process, or as ASTER_WORKERS processes sharing the
gRPC port with SO_REUSEPORT (one Python process uses one core)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import sys
from types import FrameType

import structlog

from aster.server.config import Settings
from aster.server.errors import StartupError
from aster.server.observability.logging import configure_logging

_log = structlog.get_logger("aster.server")


def _worker(settings: Settings) -> None:
    from aster.server.app import run_server

    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run_server(settings, migrate=False))


def _check_multi_worker(settings: Settings) -> None:
    if not settings.redis_url:
        raise StartupError(
            f"ASTER_WORKERS={settings.workers} needs ASTER_REDIS_URL: live run streams and "
            "cancellations must reach every worker process, and the in-process event bus "
            "cannot do that"
        )
    if settings.storage_backend == "sqlite":
        _log.info("several workers share one SQLite file (WAL mode); writes are serialised")


async def _migrate_only(settings: Settings) -> None:
    from aster.server.storage import migrate
    from aster.server.storage.database import Database

    database = Database(settings.effective_database_url)
    try:
        await migrate.upgrade(database)
    finally:
        await database.close()


def serve(settings: Settings) -> int:
    """Runs `aster serve` until SIGTERM/SIGINT; returns the exit code."""
    configure_logging(settings.log_level, settings.log_format)
    try:
        return _serve(settings)
    except StartupError as err:
        _log.error("cannot start", reason=str(err))
        print(f"aster: {err}", file=sys.stderr)
        return 1


def _serve(settings: Settings) -> int:
    if settings.workers == 1:
        from aster.server.app import run_server
        from aster.server.observability.metrics import serve_metrics

        if settings.metrics_port:
            serve_metrics(settings.metrics_port, settings.metrics_host)
        asyncio.run(run_server(settings))
        return 0

    _check_multi_worker(settings)
    if settings.auto_migrate:
        asyncio.run(_migrate_only(settings))
    metrics_dir = settings.data_dir / "prometheus-multiproc"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    from aster.server.observability.metrics import serve_metrics

    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.metrics_host)
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(settings,), name=f"aster-worker-{i}")
        for i in range(settings.workers)
    ]
    for process in workers:
        process.start()
    _log.info("workers started", workers=settings.workers, pids=[p.pid for p in workers])

    def forward(signum: int, _frame: FrameType | None) -> None:
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in workers:
        process.join()
    codes = [process.exitcode or 0 for process in workers]
    return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve(Settings()))
