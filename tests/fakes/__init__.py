"""Fakes of the outside world for tests (a model server speaking the OpenAI
and Anthropic wire formats)."""

from tests.fakes.model_server import FakeModelServer, FakeToolCall, RecordedRequest, Reply

__all__ = ["FakeModelServer", "FakeToolCall", "RecordedRequest", "Reply"]
