"""Workflow step overhead: the time between the steps of a no-op tool
workflow, against the same tool calls made directly.

One `aster serve` (SQLite in a fresh data dir, or --database-url), one
workflow of --steps chained `calculator` tool steps (`1+1`), executed
--runs times one after another. For each execution the script records:

  - per step, end to end: (execution end - execution create) / steps, as a
    client sees it (ExecuteWorkflow, then WatchExecution to the end);
  - per step inside the engine: (end of the last step - start of the
    first) / steps, from the recorded step history (what durability costs:
    each step's start is one committed transaction, which also stores the
    previous step's result and events);
  - per call, direct: ToolService.ExecuteTool of the same tool with the same
    arguments, --steps calls in a row over one gRPC channel.

Prints a markdown table (median and p95 over all runs). See bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import json_format, struct_pb2
from harness import (
    GRPC_OPTIONS,
    HOST,
    BenchError,
    aster_server,
    machine,
    percentile,
    run_bench,
)

from aster.v1 import tool_pb2, tool_pb2_grpc, workflow_pb2, workflow_pb2_grpc

TERMINAL = {
    workflow_pb2.EXECUTION_STATE_COMPLETED,
    workflow_pb2.EXECUTION_STATE_FAILED,
    workflow_pb2.EXECUTION_STATE_CANCELLED,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="tool steps per workflow")
    parser.add_argument("--runs", type=int, default=10, help="executions measured")
    parser.add_argument("--warmup", type=int, default=2, help="executions not measured")
    parser.add_argument("--database-url", default="", help="ASTER_DATABASE_URL (default SQLite)")
    parser.add_argument("--output", default="", help="also write the report here")
    return parser.parse_args()


def workflow(steps: int) -> workflow_pb2.Workflow:
    """`steps` chained calculator steps."""
    body = {
        "display_name": "bench no-op steps",
        "steps": [
            {
                "name": f"s{i}",
                "tool": {"tool_id": "calculator", "arguments": {"expression": "1+1"}},
                "next": f"s{i + 1}" if i + 1 < steps else "",
            }
            for i in range(steps)
        ],
    }
    return json_format.ParseDict(body, workflow_pb2.Workflow())


def run_workflow(
    stub: workflow_pb2_grpc.WorkflowServiceStub, workflow_id: str
) -> tuple[float, float]:
    """One execution: client-seen and engine seconds per step."""
    begin = time.perf_counter()
    execution = stub.ExecuteWorkflow(workflow_pb2.ExecuteWorkflowRequest(workflow_id=workflow_id))
    for event in stub.WatchExecution(
        workflow_pb2.WatchExecutionRequest(workflow_id=workflow_id, execution_id=execution.id)
    ):
        if event.WhichOneof("event") == "state_changed" and event.state_changed.state in TERMINAL:
            break
    elapsed = time.perf_counter() - begin
    done = stub.GetExecution(
        workflow_pb2.GetExecutionRequest(workflow_id=workflow_id, execution_id=execution.id)
    )
    if done.state != workflow_pb2.EXECUTION_STATE_COMPLETED:
        raise BenchError(f"execution {done.id} ended {done.state}: {done.error}")
    steps = list(done.steps)
    span = steps[-1].end_time.ToDatetime() - steps[0].start_time.ToDatetime()
    return elapsed / len(steps), span.total_seconds() / len(steps)


def run_direct(stub: tool_pb2_grpc.ToolServiceStub, calls: int) -> list[float]:
    """`calls` ExecuteTool calls in a row: seconds each."""
    arguments = struct_pb2.Struct()
    arguments.update({"expression": "1+1"})
    times = []
    for _ in range(calls):
        begin = time.perf_counter()
        reply = stub.ExecuteTool(
            tool_pb2.ExecuteToolRequest(tool_id="calculator", arguments=arguments)
        )
        times.append(time.perf_counter() - begin)
        if reply.error:
            raise BenchError(f"calculator failed: {reply.error}")
    return times


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered) * 1000:.2f} | {percentile(ordered, 95) * 1000:.2f}"


def measure(args: argparse.Namespace, work: Path) -> list[str]:
    """Runs the executions and the direct calls on one fresh server; the report."""
    with (
        aster_server(work, args.database_url, name="aster") as port,
        grpc.insecure_channel(f"{HOST}:{port}", options=GRPC_OPTIONS) as ch,
    ):
        flows = workflow_pb2_grpc.WorkflowServiceStub(ch)
        tools = tool_pb2_grpc.ToolServiceStub(ch)
        created = flows.CreateWorkflow(
            workflow_pb2.CreateWorkflowRequest(workflow=workflow(args.steps))
        )
        per_step: list[float] = []
        engine: list[float] = []
        direct: list[float] = []
        for i in range(args.warmup + args.runs):
            step_s, engine_s = run_workflow(flows, created.id)
            calls = run_direct(tools, args.steps)
            if i >= args.warmup:
                per_step.append(step_s)
                engine.append(engine_s)
                direct.extend(calls)
    backend = "PostgreSQL" if args.database_url else "SQLite"
    return [
        f"Workflow step overhead ({backend}; {args.steps} no-op `calculator` steps, "
        f"{args.runs} executions after {args.warmup} warm-up)",
        "",
        "| measure | median ms | p95 ms |",
        "|---|---|---|",
        f"| direct ExecuteTool call, client round trip | {ms(direct)} |",
        f"| workflow, per step, client-seen (execute → last event) | {ms(per_step)} |",
        f"| workflow, per step inside the engine (first start → last end) | {ms(engine)} |",
        "",
        *machine(),
    ]


def main() -> int:
    """Entry point; stops the server however the run ends."""
    args = parse_args()
    output = Path(args.output) if args.output else None
    return run_bench("aster-wf-bench-", lambda work: measure(args, work), output=output)


if __name__ == "__main__":
    sys.exit(main())
