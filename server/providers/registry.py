"""Picks the provider for an agent's `ModelConfig` and keeps the SDK clients
warm: one client per (provider, base URL, key), reused across runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anthropic
import openai
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from aster.server.agents.models import PROVIDERS, ModelConfig
from aster.server.errors import InvalidArgument
from aster.server.providers.anthropic_provider import AnthropicProvider
from aster.server.providers.base import ModelProvider
from aster.server.providers.openai_provider import OpenAIProvider
from aster.server.providers.scripted import ScriptedProvider
from aster.server.providers.secrets import resolve_api_key

# Seconds to wait for a connection, and at most between two bytes of a reply
# (a long prompt can take a while to its first token).
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 120.0

_ClientKey = tuple[str, str, str]


def key_fingerprint(api_key: str) -> str:
    """A short, non-reversible tag of `api_key`, for cache keys (never the key)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class ProviderRegistry:
    """Hands out the provider for a model config.

    Keys are resolved on every call (so a rotated key file or variable takes
    effect on the next run); the SDK client, with its connection pool, is
    cached per (provider, base_url, key fingerprint). `aclose()` closes them."""

    def __init__(
        self,
        secrets_dir: Path,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        self.secrets_dir = secrets_dir
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._scripted = ScriptedProvider()
        self._openai: dict[_ClientKey, OpenAIProvider] = {}
        self._openai_clients: list[AsyncOpenAI] = []
        self._anthropic: dict[_ClientKey, AnthropicProvider] = {}
        self._anthropic_clients: list[AsyncAnthropic] = []

    def provider(self, config: ModelConfig) -> ModelProvider:
        """The provider for `config.provider` (empty means `scripted`).

        Raises InvalidArgument for an unknown provider and FailedPrecondition
        when the API key it needs is missing."""
        name = config.provider or "scripted"
        if name == "scripted":
            return self._scripted
        if name not in PROVIDERS:
            raise InvalidArgument(
                f"model.provider: unknown provider {name!r}; use one of {', '.join(PROVIDERS)}",
                field="model.provider",
            )
        api_key = resolve_api_key(name, config.api_key, secrets_dir=self.secrets_dir)
        key: _ClientKey = (name, config.base_url, key_fingerprint(api_key))
        if name == "openai":
            cached = self._openai.get(key)
            if cached is None:
                client = AsyncOpenAI(
                    api_key=api_key,
                    base_url=config.base_url or None,
                    max_retries=0,
                    timeout=openai.Timeout(self._read_timeout_s, connect=self._connect_timeout_s),
                )
                self._openai_clients.append(client)
                cached = OpenAIProvider(client, api_key=api_key, base_url=config.base_url)
                self._openai[key] = cached
            return cached
        cached_anthropic = self._anthropic.get(key)
        if cached_anthropic is None:
            anthropic_client = AsyncAnthropic(
                api_key=api_key,
                base_url=config.base_url or None,
                max_retries=0,
                timeout=anthropic.Timeout(self._read_timeout_s, connect=self._connect_timeout_s),
            )
            self._anthropic_clients.append(anthropic_client)
            cached_anthropic = AnthropicProvider(anthropic_client, api_key=api_key)
            self._anthropic[key] = cached_anthropic
        return cached_anthropic

    @property
    def client_count(self) -> int:
        """How many SDK clients are cached (for tests and metrics)."""
        return len(self._openai_clients) + len(self._anthropic_clients)

    async def aclose(self) -> None:
        """Closes every cached SDK client (their connection pools)."""
        openai_clients, self._openai_clients = self._openai_clients, []
        anthropic_clients, self._anthropic_clients = self._anthropic_clients, []
        self._openai.clear()
        self._anthropic.clear()
        for client in openai_clients:
            await client.close()
        for other in anthropic_clients:
            await other.close()
