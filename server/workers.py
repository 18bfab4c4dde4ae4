"""Runs the server as one process, or as ASTER_WORKERS processes sharing the
gRPC port with SO_REUSEPORT (one Python process uses one core)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import deque
from multiprocessing.connection import wait as wait_for_processes
from multiprocessing.process import BaseProcess
from types import FrameType

import structlog
from prometheus_client import multiprocess as prometheus_multiprocess

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
    return _Supervisor(settings).run()


# A worker that dies this many times within the window means a crash loop:
# the server stops instead of restarting it forever.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
RESTART_DELAY_S = 1.0


class _Supervisor:
    """Starts the worker processes, restarts one that dies unexpectedly
    (SIGKILL, out of memory, a crash), and forwards SIGTERM/SIGINT."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, BaseProcess] = {}
        self._restarts: deque[float] = deque()
        self._stopping = False
        self._failed = False

    def _start(self, index: int) -> None:
        process = self._context.Process(
            target=_worker, args=(self._settings,), name=f"aster-worker-{index}"
        )
        process.start()
        self._workers[index] = process

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        for process in self._workers.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    def _restart(self, index: int, process: BaseProcess) -> None:
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS:
            _log.error(
                "workers keep dying; stopping the server",
                restarts=len(self._restarts),
                window_s=RESTART_WINDOW_S,
            )
            self._failed = True
            self._forward(signal.SIGTERM, None)
            return
        self._restarts.append(now)
        if process.pid is not None:
            # Its gauges no longer count in the merged metrics.
            prometheus_multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
        time.sleep(RESTART_DELAY_S)
        if not self._stopping:
            self._start(index)
            _log.warning(
                "restarted a worker that died",
                worker=index,
                exit_code=process.exitcode,
                pid=self._workers[index].pid,
            )

    def run(self) -> int:
        """Supervises until every worker has stopped; returns the exit code."""
        for index in range(self._settings.workers):
            self._start(index)
        _log.info(
            "workers started",
            workers=self._settings.workers,
            pids=[p.pid for p in self._workers.values()],
        )
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        codes: list[int] = []
        while self._workers:
            wait_for_processes([p.sentinel for p in self._workers.values()], timeout=1.0)
            for index, process in list(self._workers.items()):
                if process.is_alive():
                    continue
                process.join()
                del self._workers[index]
                code = process.exitcode or 0
                if self._stopping:
                    codes.append(code)
                else:
                    _log.error("a worker died", worker=index, exit_code=code, pid=process.pid)
                    self._restart(index, process)
        if self._failed:
            return 1
        return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve(Settings()))
