"""Who may call the API: one bearer token (`TRANSCHED_API_TOKEN`), compared in constant time.

With a token set, every request that creates, stops or changes (any method but GET/HEAD/OPTIONS) needs
`Authorization: Bearer <token>`; reads need it too unless `TRANSCHED_PUBLIC_READS=true`. The same rule
guards the routes (a FastAPI dependency, so OpenAPI documents the scheme) and optuna-dashboard's mounts
(plain ASGI apps, see `service.routers.dashboard`). Without a token nothing is checked (a loopback-only
development server: `serve` refuses other addresses, see `bind_problem`). The token is never logged.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized
from service.settings import Settings

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHALLENGE = {"WWW-Authenticate": "Bearer"}
SCHEME_NAME = "bearer"
UNAUTHORIZED = {401: {"description": "missing or wrong bearer token (TRANSCHED_API_TOKEN)"}}

_bearer = HTTPBearer(auto_error=False, scheme_name=SCHEME_NAME, description="TRANSCHED_API_TOKEN")


def needs_token(settings: Settings, method: str) -> bool:
    if settings.api_token is None:
        return False
    return method.upper() not in READ_METHODS or not settings.public_reads


def token_ok(settings: Settings, given: str | None) -> bool:
    """Whether `given` is the API token; constant time in its content."""
    if settings.api_token is None:
        return True
    expected = settings.api_token.get_secret_value().encode()
    return given is not None and secrets.compare_digest(given.encode(), expected)


def bearer_from(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer ...` header, or None."""
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def problem(settings: Settings, method: str, headers: Mapping[str, str]) -> str | None:
    """Why this request is refused (the 401's detail), or None when it may go on."""
    if not needs_token(settings, method):
        return None
    given = bearer_from(headers)
    if given is None:
        return "authentication required: send Authorization: Bearer <TRANSCHED_API_TOKEN>"
    return None if token_ok(settings, given) else "invalid bearer token"


def _authorize(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    # `_credentials` is there for OpenAPI's security scheme; the header is read by `problem` itself, so
    # the routes and the dashboard's mounts apply one rule.
    settings = request.state.app_state.settings
    why = problem(settings, request.method, request.headers)
    if why:
        raise Unauthorized(why)


Authorized = Depends(_authorize)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_problem(settings: Settings) -> str | None:
    """Why the API must not listen on `settings.host` as configured, or None."""
    if is_loopback(settings.host) or settings.api_token is not None or settings.allow_unauthenticated:
        return None
    return (
        f"refusing to serve on {settings.host} without authentication: set TRANSCHED_API_TOKEN (clients "
        "send it as Authorization: Bearer), or TRANSCHED_ALLOW_UNAUTHENTICATED=true if the network in "
        "front of it is trusted"
    )
