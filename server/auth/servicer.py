"""AuthService over gRPC: API key management for admins."""

from __future__ import annotations

from typing import Any

import grpc

from aster.server.auth.api_key_service import ApiKeyService
from aster.server.auth.models import ApiKey
from aster.server.errors import InvalidArgument
from aster.server.rpc.convert import timestamp, to_datetime
from aster.v1 import auth_pb2, auth_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def key_to_proto(key: ApiKey) -> auth_pb2.ApiKey:
    """A stored key, without any secret."""
    message = auth_pb2.ApiKey(
        id=key.id,
        display_name=key.display_name,
        tenant=key.tenant,
        scopes=key.scopes,
        prefix=key.prefix,
        create_time=timestamp(key.create_time),
        revoked=key.revoked,
    )
    for name in ("expire_time", "revoke_time", "last_use_time"):
        value = getattr(key, name)
        if value is not None:
            getattr(message, name).CopyFrom(timestamp(value))
    return message


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Creates, lists and revokes API keys."""

    def __init__(self, keys: ApiKeyService) -> None:
        self._keys = keys

    async def CreateApiKey(
        self, request: auth_pb2.CreateApiKeyRequest, context: Context
    ) -> auth_pb2.CreateApiKeyResponse:
        if not request.HasField("api_key"):
            raise InvalidArgument("api_key is required", field="api_key")
        wanted = request.api_key
        expire = (
            to_datetime(wanted.expire_time, "api_key.expire_time")
            if wanted.HasField("expire_time")
            else None
        )
        key, secret = await self._keys.create(
            wanted.tenant, list(wanted.scopes), wanted.display_name, expire
        )
        return auth_pb2.CreateApiKeyResponse(api_key=key_to_proto(key), secret=secret)

    async def ListApiKeys(
        self, request: auth_pb2.ListApiKeysRequest, context: Context
    ) -> auth_pb2.ListApiKeysResponse:
        page = await self._keys.list(
            request.tenant, request.show_revoked, request.page_size, request.page_token
        )
        return auth_pb2.ListApiKeysResponse(
            api_keys=[key_to_proto(k) for k in page.items], next_page_token=page.next_page_token
        )

    async def GetApiKey(
        self, request: auth_pb2.GetApiKeyRequest, context: Context
    ) -> auth_pb2.ApiKey:
        return key_to_proto(await self._keys.get(request.id))

    async def RevokeApiKey(
        self, request: auth_pb2.RevokeApiKeyRequest, context: Context
    ) -> auth_pb2.ApiKey:
        return key_to_proto(await self._keys.revoke(request.id))
