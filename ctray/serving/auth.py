"""Optional bearer-token auth for the labeling API.

The token comes only from the replica's environment (``CTRAY_SERVE_TOKEN``), never
from a config file or app argument, so it is not stored in Serve's deployment
config or shown on the dashboard. Unset means auth is off (a loopback-only
server on a laptop); set it on every node of a shared cluster.
"""

from __future__ import annotations

import hmac
import os

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

TOKEN_ENV = "CTRAY_SERVE_TOKEN"

# auto_error=False: a missing header must give 401 (and only when auth is on),
# not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False,
                     description=f"required when {TOKEN_ENV} is set on the server")


def expected_token() -> str | None:
    """The bearer token the replica expects (None: auth is off)."""
    return os.environ.get(TOKEN_ENV) or None


def auth_enabled() -> bool:
    """Whether ``CTRAY_SERVE_TOKEN`` is set in the replica's environment."""
    return expected_token() is not None


async def require_token(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """FastAPI dependency: 401 unless the request carries the expected token."""
    token = expected_token()
    if token is None:
        return
    given = credentials.credentials if credentials is not None else ""
    # Constant-time comparison: the response time must not reveal a matching prefix.
    if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid bearer token" if given else "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


AUTH = [Depends(require_token)]
