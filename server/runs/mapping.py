"""Run and event messages ⇄ run domain types."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import json_format

from aster.server.rpc.convert import timestamp
from aster.server.runs.models import MultitaskStrategy, OnDisconnect, Run, RunEvent, RunRequest
from aster.v1 import agent_pb2, run_pb2

_STRATEGIES = {
    run_pb2.MULTITASK_STRATEGY_UNSPECIFIED: MultitaskStrategy.REJECT,
    run_pb2.MULTITASK_STRATEGY_REJECT: MultitaskStrategy.REJECT,
    run_pb2.MULTITASK_STRATEGY_ENQUEUE: MultitaskStrategy.ENQUEUE,
    run_pb2.MULTITASK_STRATEGY_INTERRUPT: MultitaskStrategy.INTERRUPT,
}
_DISCONNECT = {
    run_pb2.ON_DISCONNECT_UNSPECIFIED: OnDisconnect.CANCEL,
    run_pb2.ON_DISCONNECT_CANCEL: OnDisconnect.CANCEL,
    run_pb2.ON_DISCONNECT_CONTINUE: OnDisconnect.CONTINUE,
}


def run_request(
    message: agent_pb2.ChatRequest | agent_pb2.RunAgentRequest | agent_pb2.SendMessageRequest,
    *,
    background: bool = False,
) -> RunRequest:
    """The run a Chat, RunAgent or SendMessage request asks for."""
    return RunRequest(
        agent_id=message.agent_id,
        message=message.message,
        session_id=message.session_id,
        on_disconnect=_DISCONNECT.get(message.on_disconnect, OnDisconnect.CANCEL),
        multitask_strategy=_STRATEGIES.get(message.multitask_strategy, MultitaskStrategy.REJECT),
        background=background,
    )


def _time(value: datetime | None) -> Any:
    return timestamp(value) if value is not None else None


def run_to_proto(run: Run) -> run_pb2.Run:
    """The Run message of a stored run."""
    message = run_pb2.Run(
        id=run.id,
        agent_id=run.agent_id,
        session_id=run.session_id,
        status=run_pb2.RunStatus.Value(f"RUN_STATUS_{run.status.value}"),
        attempt=run.attempt,
        input=run_pb2.Message(
            id=run.input_message_id,
            role=run_pb2.MESSAGE_ROLE_USER,
            content=run.input_text,
            run_id=run.id,
        ),
        usage=run_pb2.Usage(input_tokens=run.input_tokens, output_tokens=run.output_tokens),
        error=run.error,
        create_time=timestamp(run.create_time),
        start_time=_time(run.start_time),
        end_time=_time(run.end_time),
        last_seq=run.last_seq,
    )
    if run.result_message_id:
        message.result.CopyFrom(
            run_pb2.Message(
                id=run.result_message_id,
                role=run_pb2.MESSAGE_ROLE_ASSISTANT,
                content=run.result_text,
                run_id=run.id,
            )
        )
    return message


def _proto_data(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    if kind != "run_finished":
        return data
    fixed: dict[str, Any] = {"status": f"RUN_STATUS_{data['status']}"}
    if data.get("result"):
        result = dict(data["result"])
        result["role"] = f"MESSAGE_ROLE_{result['role'].upper()}"
        fixed["result"] = result
    return fixed


def event_to_proto(event: RunEvent) -> run_pb2.ChatEvent:
    """The ChatEvent message of a run event."""
    message = run_pb2.ChatEvent(
        run_id=event.run_id,
        session_id=event.session_id,
        seq=event.seq,
        attempt=event.attempt,
        create_time=_time(event.create_time),
    )
    json_format.ParseDict(_proto_data(event.kind, event.data), getattr(message, event.kind))
    return message
