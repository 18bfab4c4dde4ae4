"""Fault scenarios: three replicas on PostgreSQL and Redis behind one Envoy,
all on loopback. Sizes scale with ASTER_FAULT_SCALE (1 in `make test`, 10
for `make soak`)."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from redis import asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy import text

from aster.server.bus.redis_streams import PREFIX
from aster.server.runs.event_log import topic
from aster.server.storage.database import Database
from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from tests.chat_helpers import event_from_json, scripted_agent, sse_events, words
from tests.conftest import IN_CI
from tests.processes import Ports, Process, free_port, stack_env, start_edge, start_server
from tests.unit.storage.conftest import _reset_postgres

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SCALE = int(os.environ.get("ASTER_FAULT_SCALE", "1"))
LEASE_S = "2"
COMPLETED = run_pb2.RUN_STATUS_COMPLETED
TERMINAL = (run_pb2.RUN_STATUS_COMPLETED, run_pb2.RUN_STATUS_FAILED, run_pb2.RUN_STATUS_CANCELLED)


@dataclass
class Cluster:
    env: dict[str, str]
    ports: list[Ports]
    replicas: list[Process]
    edge: Process
    data_dir: Path
    database_url: str

    def target(self, index: int) -> str:
        return f"127.0.0.1:{self.ports[index].grpc}"

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0].http}"

    def restart(self, index: int) -> None:
        self.replicas[index].stop()
        self.replicas[index] = start_server(
            self.ports[index], self.data_dir / f"r{index}", **self.env
        )


@pytest.fixture
def cluster_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings of the replicas beyond the cluster's own: a test passes them
    (indirect parametrization), or "own_redis" for a Redis of its own."""
    param = getattr(request, "param", {})
    if param == "own_redis":
        redis: OwnRedis = request.getfixturevalue("own_redis")
        return {"ASTER_REDIS_URL": redis.url}
    return dict(param)


@pytest.fixture
def cluster(
    tmp_path: Path, postgres_url: str, redis_url: str, cluster_env: dict[str, str]
) -> Iterator[Cluster]:
    asyncio.run(_reset_postgres(postgres_url))
    env = {
        "ASTER_DATABASE_URL": postgres_url,
        "ASTER_REDIS_URL": redis_url,
        "ASTER_RUN_LEASE_S": LEASE_S,
        "ASTER_QUEUE_POLL_S": "0.2",
        "ASTER_AUTO_MIGRATE": "false",
        "ASTER_LOG_LEVEL": "warning",
        # `make soak` queues more runs at once than the default quota (100).
        "ASTER_QUOTA_MAX_CONCURRENT_RUNS": "0",
        **cluster_env,
    }
    ports = [Ports() for _ in range(3)]
    upgrade = subprocess.run(
        [sys.executable, "-m", "aster.server.cli", "db", "upgrade"],
        env=stack_env(ports[0], tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    started: list[Process] = []
    cluster: Cluster | None = None
    try:
        for index, replica_ports in enumerate(ports):
            started.append(start_server(replica_ports, tmp_path / f"r{index}", **env))
        upstreams = ",".join(f"127.0.0.1:{p.grpc}" for p in ports)
        edge = start_edge(ports[0], tmp_path / "edge", ASTER_UPSTREAMS=upstreams)
        started.append(edge)
        cluster = Cluster(env, ports, started[:3], edge, tmp_path, postgres_url)
        yield cluster
    finally:
        # Whatever started is stopped, even if start-up failed half way: a
        # stray replica would keep polling the shared test database.
        # In parallel: each may take its drain and grace period to stop.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(Process.stop, {*started, *(cluster.replicas if cluster else [])}))
        asyncio.run(_reset_postgres(postgres_url))


@pytest.fixture
async def agents0(cluster: Cluster) -> AsyncIterator[agent_pb2_grpc.AgentServiceStub]:
    async with grpc.aio.insecure_channel(cluster.target(0)) as channel:
        yield agent_pb2_grpc.AgentServiceStub(channel)


async def run_states(database_url: str) -> dict[str, tuple[str, int, int, int]]:
    """run id → (status, attempt, run_finished events, run_retry events)."""
    database = Database(database_url)
    try:
        async with database.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT r.id, r.status, r.attempt,"
                    " (SELECT count(*) FROM run_events e"
                    "  WHERE e.run_id = r.id AND e.kind = 'run_finished'),"
                    " (SELECT count(*) FROM run_events e"
                    "  WHERE e.run_id = r.id AND e.kind = 'run_retry')"
                    " FROM runs r"
                )
            )
            return {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}
    finally:
        await database.close()


async def run_endings(database_url: str, run_ids: list[str]) -> list[tuple[str, str, int, str]]:
    """(id, status, attempt, error) of some runs, for a failure message."""
    database = Database(database_url)
    try:
        async with database.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT id, status, attempt, error FROM runs WHERE id = ANY(:ids)"),
                {"ids": run_ids},
            )
            return [(row[0], row[1], row[2], row[3]) for row in rows]
    finally:
        await database.close()


async def wait_all_terminal(
    database_url: str, count: int, limit_s: float
) -> dict[str, tuple[str, int, int, int]]:
    deadline = time.monotonic() + limit_s
    while True:
        states = await run_states(database_url)
        if len(states) >= count and all(
            s[0] in ("COMPLETED", "FAILED", "CANCELLED") for s in states.values()
        ):
            return states
        if time.monotonic() > deadline:
            pending = {
                k: v for k, v in states.items() if v[0] not in ("COMPLETED", "FAILED", "CANCELLED")
            }
            raise AssertionError(
                f"runs not terminal after {limit_s}s: {len(pending)}, "
                f"e.g. {list(pending.items())[:3]}"
            )
        await asyncio.sleep(0.5)


async def test_background_runs_survive_a_killed_replica(
    cluster: Cluster, agents0: agent_pb2_grpc.AgentServiceStub
) -> None:
    count = 60 * SCALE
    text_ = words(20)
    agent = await scripted_agent(agents0, script=[{"text": text_}], delay_ms=40)
    started = time.monotonic()
    run_ids = []
    for i in range(count):
        async with grpc.aio.insecure_channel(cluster.target(i % 3)) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            run = await stub.SendMessage(
                agent_pb2.SendMessageRequest(agent_id=agent.id, message="go")
            )
            run_ids.append(run.id)
    cluster.replicas[1].popen.send_signal(signal.SIGKILL)
    states = await wait_all_terminal(cluster.database_url, count, 60 * SCALE)
    statuses = [states[r] for r in run_ids]
    lost = [r for r in run_ids if r not in states]
    not_completed = [s for s in statuses if s[0] != "COMPLETED"]
    twice = [s for s in statuses if s[2] != 1]
    rescued = [s for s in statuses if s[1] > 1]
    print(
        f"\nfault 1: runs={count} kills=1 lost={len(lost)} not_completed={len(not_completed)}"
        f" duplicated={len(twice)} rescued={len(rescued)} seconds={time.monotonic() - started:.1f}"
    )
    assert not lost
    assert not not_completed, not_completed[:3]
    assert not twice
    assert rescued, "the killed replica held no run; the scenario proved nothing"
    assert all(s[3] >= 1 for s in rescued), "a rescued run lacks its run_retry event"


async def test_a_zombie_replica_commits_nothing(
    cluster: Cluster, agents0: agent_pb2_grpc.AgentServiceStub
) -> None:
    count = 9 * SCALE
    agent = await scripted_agent(agents0, script=[{"text": words(40)}], delay_ms=50)
    run_ids = []
    async with grpc.aio.insecure_channel(cluster.target(2)) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        for _ in range(count):
            run_ids.append(
                (
                    await stub.SendMessage(
                        agent_pb2.SendMessageRequest(agent_id=agent.id, message="z")
                    )
                ).id
            )
    await asyncio.sleep(0.5)
    zombie = cluster.replicas[2].popen
    zombie.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(float(LEASE_S) * 3)  # past its lease: the others rescue its runs
    finally:
        zombie.send_signal(signal.SIGCONT)
    states = await wait_all_terminal(cluster.database_url, count, 60)
    # The zombie wakes with its runs' streams half written: give it time to
    # try its next writes (a token every 50 ms, a lease renewal every
    # second) before looking for anything it got through.
    await asyncio.sleep(float(LEASE_S) * 2)
    cluster.replicas[2].assert_running()
    states = await run_states(cluster.database_url)
    statuses = [states[r] for r in run_ids]
    database = Database(cluster.database_url)
    try:
        async with database.engine.connect() as conn:
            # Events of an attempt stored after a later attempt began.
            late = await conn.scalar(
                text(
                    "SELECT count(*) FROM run_events e JOIN run_events r ON r.run_id = e.run_id"
                    " WHERE r.kind = 'run_retry' AND e.seq > r.seq AND e.attempt < r.attempt"
                )
            )
            # Each run's events are seq 1..n without a gap or a repeat.
            gaps = await conn.scalar(
                text(
                    "SELECT count(*) FROM (SELECT run_id, count(*) AS n, max(seq) AS top,"
                    " count(DISTINCT seq) AS distinct_seqs FROM run_events GROUP BY run_id) s"
                    " WHERE n != top OR distinct_seqs != n"
                )
            )
            # Replies in the conversation: one active assistant message per run.
            replies = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT run_id, count(*) FROM messages"
                            " WHERE role = 'assistant' AND active GROUP BY run_id"
                        )
                    )
                ).all()
            )
    finally:
        await database.close()
    rescued = sum(s[1] > 1 for s in statuses)
    duplicated = sum(s[2] != 1 for s in statuses) + sum(replies.get(r, 0) != 1 for r in run_ids)
    print(
        f"\nfault 3: runs={count} kills=0 stops=1 lost=0 rescued={rescued}"
        f" duplicated={duplicated} late_events={late} seq_gaps={gaps}"
    )
    assert all(s[0] == "COMPLETED" for s in statuses)
    assert all(s[2] == 1 for s in statuses), "a run completed twice"
    assert rescued, "the zombie held no run; the scenario proved nothing"
    assert late == 0, "the zombie stored events after its runs were rescued"
    assert gaps == 0
    assert all(replies.get(r, 0) == 1 for r in run_ids), f"replies per run: {replies}"


def metric(metrics_port: int, line_start: str) -> float:
    """The value of the first sample of one replica whose line starts so."""
    text_ = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    for line in text_.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


CANCELLED_RUNS = 'aster_runs_total{status="CANCELLED"}'


async def test_cancel_through_another_replica(
    cluster: Cluster, agents0: agent_pb2_grpc.AgentServiceStub
) -> None:
    agent = await scripted_agent(agents0, script=[{"text": words(300)}], delay_ms=30)
    before = [metric(cluster.ports[i].metrics, CANCELLED_RUNS) for i in range(3)]
    # A chat is executed by the replica it was sent to (A), which streams it.
    chat = agents0.Chat(agent_pb2.ChatRequest(agent_id=agent.id, message="x"))
    first = await chat.read()
    assert isinstance(first, run_pb2.ChatEvent)
    await asyncio.sleep(0.5)
    async with grpc.aio.insecure_channel(cluster.target(1)) as channel:
        other = agent_pb2_grpc.AgentServiceStub(channel)
        started = time.monotonic()
        cancelled = await other.CancelRun(agent_pb2.CancelRunRequest(run_id=first.run_id))
        elapsed = time.monotonic() - started
    rest = []
    while (event := await chat.read()) is not grpc.aio.EOF:
        rest.append(event)
    after = [metric(cluster.ports[i].metrics, CANCELLED_RUNS) for i in range(3)]
    print(f"\nfault 4: runs=1 cancelled through another replica in {elapsed:.2f}s")
    assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED
    assert elapsed < 2
    assert rest[-1].run_finished.status == run_pb2.RUN_STATUS_CANCELLED
    # The run ended on A, not on B where the cancel came in.
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 0, 0]


def active_streams(metrics_port: int) -> float:
    """The aster_active_streams gauge of one replica."""
    return metric(metrics_port, "aster_active_streams ")


async def chat_to_the_end(http: httpx.AsyncClient, agent_id: str) -> tuple[str, float, str]:
    """Chats through the edge and, whenever the stream breaks, rejoins the
    run with its last seq until run_finished. Returns the last attempt's
    text, how long the first rejoin took to deliver (0: none needed) and a
    description of how the run ended."""
    seen: list[run_pb2.ChatEvent] = []
    rejoin_started = 0.0
    rejoin_time = 0.0
    while not seen:
        # A chat refused before it started (its replica just died) is
        # simply sent again; one that started is joined below.
        try:
            async for data in sse_events(
                http,
                "POST",
                f"/v1/agents/{agent_id}/chat",
                json={"message": "go", "on_disconnect": "ON_DISCONNECT_CONTINUE"},
            ):
                seen.append(event_from_json(data))
        except (httpx.HTTPError, AssertionError):
            rejoin_started = time.monotonic()
            if not seen:
                await asyncio.sleep(0.2)
    if seen[-1].WhichOneof("event") != "run_finished" and not rejoin_started:
        rejoin_started = time.monotonic()  # the edge ended the stream early
    while seen[-1].WhichOneof("event") != "run_finished":
        try:
            async for data in sse_events(
                http,
                "GET",
                f"/v1/runs/{seen[0].run_id}/stream",
                params={"after_seq": seen[-1].seq},
            ):
                seen.append(event_from_json(data))
                if rejoin_started and not rejoin_time:
                    rejoin_time = time.monotonic() - rejoin_started
        except (httpx.HTTPError, AssertionError):
            await asyncio.sleep(0.2)
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    last_attempt = max(e.attempt for e in seen)
    final = "".join(
        e.text_delta.delta
        for e in seen
        if e.WhichOneof("event") == "text_delta" and e.attempt == last_attempt
    )
    # How the run ended, for the failure message: a run that FAILED
    # (e.g. it lost its worker max_attempts times) has a partial text.
    ending = f"{seen[0].run_id}: {run_pb2.RunStatus.Name(seen[-1].run_finished.status)}"
    ending += f", attempt {last_attempt}, {len(final.split())} words"
    return final, rejoin_time, ending


def p99(values: list[float]) -> float:
    """The nearest-rank 99th percentile (the largest value below 100 samples)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)]


async def test_chat_streams_rejoin_through_envoy_after_a_kill(
    cluster: Cluster, agents0: agent_pb2_grpc.AgentServiceStub
) -> None:
    streams = 15 * SCALE
    text_ = words(60)
    agent = await scripted_agent(agents0, script=[{"text": text_}], delay_ms=40)

    async with httpx.AsyncClient(base_url=cluster.edge_url, timeout=30) as http:
        tasks = [asyncio.create_task(chat_to_the_end(http, agent.id)) for _ in range(streams)]
        await asyncio.sleep(1.0)
        # Kill the replica serving the most streams right now.
        busiest = max(range(3), key=lambda i: active_streams(cluster.ports[i].metrics))
        assert active_streams(cluster.ports[busiest].metrics) > 0
        cluster.replicas[busiest].popen.send_signal(signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 90)
    rejoins = [t for _, t, _ in results if t]
    wrong = [ending for final, _, ending in results if final != text_]
    # Duplicated or missing events fail in chat_to_the_end (seq 1, 2, ...).
    print(
        f"\nfault 2: streams={streams} kills=1 wrong_text={len(wrong)}"
        f" rejoined={len(rejoins)} rejoin_p99={p99(rejoins):.2f}s"
    )
    assert not wrong, f"final text differs from a clean run's ({len(text_.split())} words): {wrong}"
    assert rejoins, "no stream was on the killed replica; the scenario proved nothing"


class OwnRedis:
    """A redis-server of this test's own, to stop and start at will."""

    def __init__(self, directory: Path) -> None:
        from tests.e2e.test_health_metrics import start_redis

        self._start = start_redis
        self.port = free_port()
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._process = self._start(self.port, self._directory)
        time.sleep(0.3)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path)
    redis.start()
    yield redis
    redis.stop()


async def bus_recovered(
    cluster: Cluster, quick: agent_pb2.Agent, slow: agent_pb2.Agent, redis: aioredis.Redis
) -> bool:
    """Whether the distributed bus works end to end again: a short chat
    through the edge streams its whole text, a run's events are in Redis
    again, and a run started on one replica and cancelled through another
    ends within 2 s."""
    try:
        async with httpx.AsyncClient(base_url=cluster.edge_url, timeout=10) as http:
            final, _, _ = await asyncio.wait_for(chat_to_the_end(http, quick.id), 10)
        if final != quick.model.params["script"][0]["text"]:
            return False
        async with grpc.aio.insecure_channel(cluster.target(0)) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            run = await stub.SendMessage(
                agent_pb2.SendMessageRequest(agent_id=slow.id, message="probe"), timeout=5
            )
        await asyncio.sleep(0.3)
        if not await redis.xlen(PREFIX + topic(run.id)):
            return False
        async with grpc.aio.insecure_channel(cluster.target(1)) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            started = time.monotonic()
            cancelled = await stub.CancelRun(agent_pb2.CancelRunRequest(run_id=run.id), timeout=5)
        ended = cancelled.status in TERMINAL
        return ended and time.monotonic() - started < 2
    except (grpc.aio.AioRpcError, httpx.HTTPError, AssertionError, TimeoutError, RedisError):
        return False


# The cluster on a Redis of the test's own, which it stops and starts.
@pytest.mark.parametrize("cluster_env", ["own_redis"], indirect=True)
async def test_a_redis_restart_loses_nothing(
    cluster: Cluster, agents0: agent_pb2_grpc.AgentServiceStub, own_redis: OwnRedis
) -> None:
    count = 20 * SCALE
    streams = 5 * SCALE
    text_ = words(60)
    agent = await scripted_agent(agents0, script=[{"text": text_}], delay_ms=40)
    quick = await scripted_agent(agents0, script=[{"text": words(5)}], delay_ms=10)
    run_ids = [
        (await agents0.SendMessage(agent_pb2.SendMessageRequest(agent_id=agent.id, message="r"))).id
        for _ in range(count)
    ]
    async with httpx.AsyncClient(base_url=cluster.edge_url, timeout=30) as http:
        chats = [asyncio.create_task(chat_to_the_end(http, agent.id)) for _ in range(streams)]
        # Redis goes away with runs executing and streams open, and comes back
        # empty (it keeps nothing on disk).
        await asyncio.sleep(0.5)
        own_redis.stop()
        await asyncio.sleep(2)
        own_redis.start()
        back = time.monotonic()
        redis = aioredis.from_url(own_redis.url)
        try:
            while not await bus_recovered(cluster, quick, agent, redis):
                assert time.monotonic() - back < 10, "not recovered 10 s after Redis came back"
                await asyncio.sleep(0.5)
        finally:
            await redis.aclose()
        recovered = time.monotonic() - back
        results = await asyncio.wait_for(asyncio.gather(*chats), 60)
    states = await wait_all_terminal(cluster.database_url, count, 60)
    lost = [r for r in run_ids if states.get(r, ("",))[0] != "COMPLETED"]
    duplicated = [r for r in run_ids if r in states and states[r][2] != 1]
    wrong = [ending for final, _, ending in results if final != text_]
    rejoins = [t for _, t, _ in results if t]
    print(
        f"\nfault 5: runs={count} streams={streams} redis_restarts=1 lost={len(lost)}"
        f" duplicated={len(duplicated)} wrong_text={len(wrong)} rejoined={len(rejoins)}"
        f" rejoin_p99={p99(rejoins):.2f}s recovered_after={recovered:.1f}s"
    )
    assert not lost, await run_endings(cluster.database_url, lost[:5])
    assert not duplicated, duplicated[:3]
    assert not wrong, wrong
    for replica in cluster.replicas:
        replica.assert_running()


# Each replica drains (NOT_SERVING, still serving) until the edge's health
# checks, every 2 s, have taken it out of the rotation.
@pytest.mark.parametrize("cluster_env", [{"ASTER_SHUTDOWN_DRAIN_S": "5"}], indirect=True)
@pytest.mark.timeout(300)  # three restarts of drain (5 s), grace and start-up
async def test_a_rolling_restart_fails_no_call(
    cluster: Cluster, agents0: agent_pb2_grpc.AgentServiceStub
) -> None:
    agent = await scripted_agent(agents0)
    text_ = words(40)
    failures: list[str] = []
    calls = 0
    stop = asyncio.Event()

    async def load(write: bool) -> None:
        """Reads (GetAgent, which the edge may retry) or writes (UpdateAgent,
        which it never retries), one after another."""
        nonlocal calls
        async with httpx.AsyncClient(base_url=cluster.edge_url, timeout=10) as http:
            while not stop.is_set():
                if write:
                    response = await http.patch(
                        f"/v1/agents/{agent.id}",
                        params={"update_mask": "description"},
                        json={"description": f"call {calls}"},
                    )
                else:
                    response = await http.get(f"/v1/agents/{agent.id}")
                calls += 1
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:120]}")
                await asyncio.sleep(0.01)

    chatter = await scripted_agent(agents0, script=[{"text": text_}], delay_ms=30)
    chats: list[tuple[str, float, str]] = []

    async def chat() -> None:
        """Chats one after another; each either ends within the replica's
        grace period or rejoins the run on another replica."""
        async with httpx.AsyncClient(base_url=cluster.edge_url, timeout=30) as http:
            while not stop.is_set():
                chats.append(await chat_to_the_end(http, chatter.id))

    loaders = [asyncio.create_task(load(write)) for write in (False, True)]
    loaders += [asyncio.create_task(chat()) for _ in range(3)]
    try:
        for index in range(3):
            await asyncio.to_thread(cluster.restart, index)
            await asyncio.sleep(3)  # the edge's health check sees it back
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loaders), 60)
    wrong = [ending for final, _, ending in chats if final != text_]
    rejoins = [t for _, t, _ in chats if t]
    print(
        f"\nfault 7: unary calls={calls} (reads, writes) failed={len(failures)} in 3 restarts;"
        f" streams={len(chats)} wrong_text={len(wrong)} rejoined={len(rejoins)}"
        f" rejoin_p99={p99(rejoins):.2f}s"
    )
    assert calls > 100
    assert not failures, failures[:5]
    assert len(chats) >= 3
    assert not wrong, wrong


def _postgres_cluster(action: str) -> None:
    """Stops or starts the machine's PostgreSQL (the one the tests use)."""
    control = shutil.which("pg_ctlcluster")
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").is_dir() else []
    if control is None or not versions:
        if IN_CI:
            pytest.fail("pg_ctlcluster is not available; CI=true requires it")
        pytest.skip("pg_ctlcluster is not available")
    args = [control, "--skip-systemctl-redirect", versions[-1].name, "main", action]
    if action == "stop":
        args += ["-m", "fast"]
    subprocess.run(args, check=True, capture_output=True, timeout=60)


async def test_a_postgresql_restart_fails_cleanly_and_recovers(
    cluster: Cluster, agents0: agent_pb2_grpc.AgentServiceStub
) -> None:
    agent = await scripted_agent(agents0)
    codes: list[grpc.StatusCode] = []
    rest: list[tuple[int, int | None]] = []
    down = False
    try:
        _postgres_cluster("stop")
        down = True
        for index in range(3):
            async with grpc.aio.insecure_channel(cluster.target(index)) as channel:
                stub = agent_pb2_grpc.AgentServiceStub(channel)
                for _ in range(3):
                    try:
                        await stub.GetAgent(agent_pb2.GetAgentRequest(id=agent.id), timeout=5)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as err:
                        codes.append(err.code())
                    await asyncio.sleep(0.2)
        # Through the edge: a 503 with the JSON error body, reads and writes.
        async with httpx.AsyncClient(base_url=cluster.edge_url, timeout=30) as http:
            for _ in range(3):
                for response in (
                    await http.get(f"/v1/agents/{agent.id}"),
                    await http.post("/v1/agents", json={"display_name": "while down"}),
                ):
                    rest.append((response.status_code, response.json().get("code")))
    finally:
        if down:
            _postgres_cluster("start")
    assert set(codes) == {grpc.StatusCode.UNAVAILABLE}, codes
    assert set(rest) == {(503, grpc.StatusCode.UNAVAILABLE.value[0])}, rest
    back = time.monotonic()
    for index in range(3):  # every replica's pool recovers
        async with grpc.aio.insecure_channel(cluster.target(index)) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            while True:
                try:
                    got = await stub.GetAgent(agent_pb2.GetAgentRequest(id=agent.id), timeout=5)
                    break
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() - back < 20, f"replica {index} did not recover"
                    await asyncio.sleep(0.2)
        assert got.id == agent.id
    print(
        f"\nfault 6: while down {len(codes)} gRPC calls to 3 replicas and {len(rest)} REST"
        " calls through the edge, all UNAVAILABLE (503);"
        f" recovered in {time.monotonic() - back:.1f}s"
    )
    for replica in cluster.replicas:
        replica.assert_running()
