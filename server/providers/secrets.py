"""Resolves an agent's `SecretRef` to the API key it names.

Keys are read when a model is called and live only in memory: never stored,
never logged, and errors name the variable or file, never the value."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from aster.server.agents.models import SecretRef
from aster.server.errors import FailedPrecondition, InvalidArgument

# The variable each provider's key is taken from when the agent names none.
DEFAULT_KEY_ENV: Mapping[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
}

# A key file is small; anything bigger is not a key.
MAX_SECRET_BYTES = 64 * 1024


def read_secret(
    ref: SecretRef,
    *,
    secrets_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The value `ref` names: the environment variable `ref.env`, else the
    file `<secrets_dir>/<ref.file>` (surrounding whitespace stripped).

    Raises FailedPrecondition when the variable or file is missing or empty,
    InvalidArgument when the file name is not a plain name or `ref` is empty."""
    env = os.environ if environ is None else environ
    if ref.env:
        value = env.get(ref.env, "").strip()
        if not value:
            raise FailedPrecondition(
                f"the API key variable {ref.env} is not set in the server's environment",
                field="model.api_key.env",
            )
        return value
    if ref.file:
        return _read_secret_file(ref.file, secrets_dir)
    raise InvalidArgument("model.api_key names neither env nor file", field="model.api_key")


def _read_secret_file(name: str, secrets_dir: Path) -> str:
    if (
        name in {".", ".."}
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or Path(name).name != name
    ):
        raise InvalidArgument(
            f"model.api_key.file {name!r} must be a plain file name in the secrets directory",
            field="model.api_key.file",
        )
    path = secrets_dir / name
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except FileNotFoundError:
        raise FailedPrecondition(
            f"the API key file {name!r} does not exist in the secrets directory",
            field="model.api_key.file",
        ) from None
    except OSError as exc:
        raise FailedPrecondition(
            f"the API key file {name!r} cannot be read ({exc.strerror or type(exc).__name__})",
            field="model.api_key.file",
        ) from None
    if len(data) > MAX_SECRET_BYTES:
        raise FailedPrecondition(
            f"the API key file {name!r} is larger than {MAX_SECRET_BYTES} bytes",
            field="model.api_key.file",
        )
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise FailedPrecondition(
            f"the API key file {name!r} is not UTF-8 text", field="model.api_key.file"
        ) from None
    if not value:
        raise FailedPrecondition(f"the API key file {name!r} is empty", field="model.api_key.file")
    return value


def resolve_api_key(
    provider: str,
    ref: SecretRef | None,
    *,
    secrets_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The API key for calling `provider`: the one `ref` names, else the
    provider's conventional variable (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`).

    Returns "" for providers that need no key (`scripted`). Raises
    FailedPrecondition when a needed key is missing."""
    if ref is not None and (ref.env or ref.file):
        return read_secret(ref, secrets_dir=secrets_dir, environ=environ)
    default_env = DEFAULT_KEY_ENV.get(provider)
    if default_env is None:
        return ""
    env = os.environ if environ is None else environ
    value = env.get(default_env, "").strip()
    if not value:
        raise FailedPrecondition(
            f"provider {provider} needs an API key: set model.api_key "
            f"(env or file) or {default_env} in the server's environment",
            field="model.api_key",
        )
    return value
