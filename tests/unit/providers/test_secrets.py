"""API keys: where they come from, and that errors name them but never show them."""

from __future__ import annotations

from pathlib import Path

import pytest

from aster.server.agents.models import ModelConfig, SecretRef
from aster.server.errors import AsterError, FailedPrecondition, InvalidArgument
from aster.server.providers.anthropic_provider import AnthropicProvider
from aster.server.providers.openai_provider import OpenAIProvider
from aster.server.providers.registry import ProviderRegistry, key_fingerprint
from aster.server.providers.scripted import ScriptedProvider
from aster.server.providers.secrets import read_secret, resolve_api_key

SECRET = "sk-very-secret-value-42"


def test_env_reference_reads_the_variable() -> None:
    ref = SecretRef(env="MY_KEY")
    assert read_secret(ref, secrets_dir=Path("/nonexistent"), environ={"MY_KEY": SECRET}) == SECRET


def test_file_reference_reads_the_file_in_the_secrets_dir_stripped(tmp_path: Path) -> None:
    (tmp_path / "openai.key").write_text(f"\n  {SECRET}  \n")
    assert read_secret(SecretRef(file="openai.key"), secrets_dir=tmp_path, environ={}) == SECRET


def test_a_missing_variable_is_failed_precondition_naming_it() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        read_secret(SecretRef(env="NOT_THERE"), secrets_dir=Path("/x"), environ={})
    assert "NOT_THERE" in caught.value.message
    assert caught.value.field == "model.api_key.env"


def test_an_empty_variable_counts_as_missing() -> None:
    with pytest.raises(FailedPrecondition):
        read_secret(SecretRef(env="BLANK"), secrets_dir=Path("/x"), environ={"BLANK": "  "})


def test_a_missing_file_is_failed_precondition_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        read_secret(SecretRef(file="absent.key"), secrets_dir=tmp_path, environ={})
    assert "absent.key" in caught.value.message
    assert str(tmp_path) not in caught.value.message
    assert caught.value.field == "model.api_key.file"


def test_an_empty_file_is_failed_precondition(tmp_path: Path) -> None:
    (tmp_path / "empty.key").write_text("\n")
    with pytest.raises(FailedPrecondition, match="empty"):
        read_secret(SecretRef(file="empty.key"), secrets_dir=tmp_path, environ={})


@pytest.mark.parametrize("name", ["../secret", "a/b", "/etc/passwd", "..", ".", "a\\b"])
def test_file_names_with_path_parts_are_rejected(tmp_path: Path, name: str) -> None:
    inner = tmp_path / "secrets"
    inner.mkdir()
    (tmp_path / "secret").write_text(SECRET)
    (inner / "a").mkdir()
    (inner / "a" / "b").write_text(SECRET)
    with pytest.raises(InvalidArgument) as caught:
        read_secret(SecretRef(file=name), secrets_dir=inner, environ={})
    assert caught.value.field == "model.api_key.file"
    assert SECRET not in str(caught.value)


def test_errors_never_carry_the_value(tmp_path: Path) -> None:
    (tmp_path / "big.key").write_bytes(SECRET.encode() * 5000)
    with pytest.raises(FailedPrecondition) as caught:
        read_secret(SecretRef(file="big.key"), secrets_dir=tmp_path, environ={})
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("provider", "variable"), [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")]
)
def test_without_a_reference_the_conventional_variable_is_used(
    provider: str, variable: str
) -> None:
    key = resolve_api_key(provider, None, secrets_dir=Path("/x"), environ={variable: SECRET})
    assert key == SECRET
    empty_ref = SecretRef()
    assert resolve_api_key(provider, empty_ref, secrets_dir=Path("/x"), environ={variable: "k"})


@pytest.mark.parametrize(
    ("provider", "variable"), [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")]
)
def test_no_key_anywhere_is_failed_precondition_naming_the_options(
    provider: str, variable: str
) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        resolve_api_key(provider, None, secrets_dir=Path("/x"), environ={})
    assert variable in caught.value.message
    assert "model.api_key" in caught.value.message


def test_an_explicit_reference_wins_over_the_conventional_variable() -> None:
    environ = {"OPENAI_API_KEY": "conventional", "MINE": SECRET}
    assert (
        resolve_api_key("openai", SecretRef(env="MINE"), secrets_dir=Path("/x"), environ=environ)
        == SECRET
    )
    # And a broken explicit reference does not silently fall back.
    with pytest.raises(FailedPrecondition):
        resolve_api_key("openai", SecretRef(env="GONE"), secrets_dir=Path("/x"), environ=environ)


def test_scripted_needs_no_key() -> None:
    assert resolve_api_key("scripted", None, secrets_dir=Path("/x"), environ={}) == ""


async def test_the_registry_hands_out_providers_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    registry = ProviderRegistry(tmp_path)
    try:
        assert isinstance(registry.provider(ModelConfig(provider="scripted")), ScriptedProvider)
        assert isinstance(registry.provider(ModelConfig(provider="")), ScriptedProvider)
        assert isinstance(registry.provider(ModelConfig(provider="openai")), OpenAIProvider)
        assert isinstance(registry.provider(ModelConfig(provider="anthropic")), AnthropicProvider)
        with pytest.raises(InvalidArgument) as caught:
            registry.provider(ModelConfig(provider="gpt"))
        assert caught.value.field == "model.provider"
    finally:
        await registry.aclose()


async def test_the_registry_reports_a_missing_key_file(tmp_path: Path) -> None:
    registry = ProviderRegistry(tmp_path)
    try:
        with pytest.raises(AsterError) as caught:
            registry.provider(ModelConfig(provider="openai", api_key=SecretRef(file="nope.key")))
        assert isinstance(caught.value, FailedPrecondition)
        assert "nope.key" in caught.value.message
        assert registry.client_count == 0
    finally:
        await registry.aclose()


def test_the_key_fingerprint_does_not_reveal_the_key() -> None:
    tag = key_fingerprint(SECRET)
    assert SECRET not in tag
    assert tag == key_fingerprint(SECRET)
    assert tag != key_fingerprint(SECRET + "x")
