"""Credentials for tests: API keys through the CLI, JWTs signed locally."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.processes import Ports, stack_env

ISSUER = "https://issuer.test"
AUDIENCE = "aster"
HS_SECRET = "test-hs256-secret-that-is-long-enough-0123456789"
KID = "test-key-1"


class Signer:
    """An RSA key pair whose public half the server trusts through a JWKS file."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def write_jwks(self, path: Path) -> Path:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=KID, use="sig", alg="RS256")
        path.write_text(json.dumps({"keys": [jwk]}))
        return path

    def token(
        self, tenant: str = "t-jwt", scope: str = "agents.read agents.write", **claims: Any
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "sub": "user-1",
            "tenant": tenant,
            "scope": scope,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            **claims,
        }
        for key in [k for k, v in body.items() if v is None]:
            del body[key]
        return jwt.encode(body, self.private, algorithm="RS256", headers={"kid": KID})


def auth_env(jwks: Path, **extra: str) -> dict[str, str]:
    """Settings of a server with API keys and JWTs on."""
    return {
        "ASTER_AUTH_MODE": "api_key,jwt",
        "ASTER_JWT_ALGORITHMS": "HS256,RS256",
        "ASTER_JWT_SECRET": HS_SECRET,
        "ASTER_JWT_JWKS_FILE": str(jwks),
        "ASTER_JWT_ISSUER": ISSUER,
        "ASTER_JWT_AUDIENCE": AUDIENCE,
        **extra,
    }


def cli_key(ports: Ports, data_dir: Path, tenant: str, *scopes: str, **extra: str) -> str:
    """A new API key made with `aster keys create`."""
    args = [sys.executable, "-m", "aster.server.cli", "keys", "create", "--tenant", tenant]
    for scope in scopes:
        args += ["--scope", scope]
    result = subprocess.run(
        args, env=stack_env(ports, data_dir, **extra), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip().splitlines()[-1]
    assert secret.startswith("ak_")
    return secret
