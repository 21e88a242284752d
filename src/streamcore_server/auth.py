"""Passwords, bearer tokens, and the login endpoint.

`verify_token` takes the token string alone so the WebSocket endpoint can reuse it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import jwt
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel
from starlette.requests import Request
from starlette.responses import Response

from . import accounts, redis_client
from .errors import InvalidToken, TooManyRequests, Unauthorized
from .openapi import Operation
from .passwords import dummy_hash, verify_password
from .redis_client import Breaker
from .responses import OrjsonResponse
from .validation import NO_NUL, no_nul, read_json

log = logging.getLogger("streamcore_server.auth")

ALGORITHM = "HS256"
ISSUER = "streamcore"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user and the one org it belongs to."""

    user_id: int
    org_id: int
    email: str


class Tokens:
    """Issue and check signed bearer tokens (JWT, HS256).

    A token verified once is remembered (bounded, least recently used first out) with its
    principal and expiry until it expires: a client's next requests with the same token cost a
    dict lookup, not the HMAC and two base64 and JSON decodes. Only valid tokens are kept, and a
    kept one is refused as expired at the same instant PyJWT would refuse it.
    """

    VERIFIED_MAX = 10_000

    def __init__(self, secret: str, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self._verified: OrderedDict[str, tuple[Principal, int]] = OrderedDict()

    def issue(self, principal: Principal) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": str(principal.user_id),
            "org": principal.org_id,
            "email": principal.email,
            "iat": now,
            "exp": now + self.ttl_s,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify_token(self, token: str) -> Principal:
        """Return the token's principal; raise InvalidToken if forged, expired or malformed."""
        hit = self._verified.get(token)
        if hit is not None:
            if hit[1] > time.time():  # PyJWT: expired when exp <= now
                self._verified.move_to_end(token)
                return hit[0]
            del self._verified[token]
            raise InvalidToken("The access token has expired.")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[
                    ALGORITHM
                ],  # pinned: never let the token pick "none" or RS/HS confusion
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
            principal = Principal(int(claims["sub"]), int(claims["org"]), str(claims["email"]))
            expires = int(claims["exp"])
        except jwt.ExpiredSignatureError:
            raise InvalidToken("The access token has expired.") from None
        except (jwt.InvalidTokenError, KeyError, TypeError, ValueError):
            raise InvalidToken("The access token is not valid.") from None
        self._verified[token] = (principal, expires)
        if len(self._verified) > self.VERIFIED_MAX:
            self._verified.popitem(last=False)
        return principal


def load_or_create_secret(data_dir: str) -> str:
    """Read DATA_DIR/jwt_secret, creating it once with a random value.

    A file rather than a per-process random value: tokens survive restarts and every worker
    process signs with the same key. O_EXCL makes concurrent workers agree on one writer.
    """
    path = Path(data_dir) / "jwt_secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker may be between create and write
            secret = path.read_text().strip()
            if secret:
                return secret
            time.sleep(0.02)
        raise RuntimeError(f"{path} exists but is empty") from None
    secret = secrets.token_hex(32)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    return secret


def authenticate(request: Request) -> Principal:
    """Return the caller named by the request's bearer token, or raise 401.

    The authentication middleware has done the work once per request (scope["state"]["auth"]);
    an app assembled without it (a test's) gets the same answer from the header, user unchecked.
    """
    state = request.scope.get("state", {})
    if "auth" in state:
        outcome = state["auth"]
        if isinstance(outcome, Principal):
            return outcome
        if outcome is not None:
            raise outcome
        raise Unauthorized("Authentication required: send Authorization: Bearer <token>.")
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("Authentication required: send Authorization: Bearer <token>.")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("The Authorization header must be: Bearer <token>.")
    tokens: Tokens = request.app.state.tokens
    return tokens.verify_token(token.strip())


class LoginThrottle:
    """Count failed logins per (client, email) in a sliding window; refuse past the limit.

    In-process and bounded: enough to stop one process being used to guess passwords. With
    REDIS_URL, SharedLoginThrottle keeps the count for every instance and this one backs it up.
    """

    MAX_KEYS = 100_000

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def retry_after(self, key: tuple[str, str]) -> int:
        """Seconds until the key may try again; 0 when it may try now."""
        failures = self._failures.get(key)
        if not failures:
            return 0
        now = time.monotonic()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if len(failures) < self.max_failures:
            return 0
        return max(1, int(failures[0] + self.window_s - now) + 1)

    def failed(self, key: tuple[str, str]) -> None:
        failures = self._failures.setdefault(key, deque(maxlen=self.max_failures))
        failures.append(time.monotonic())
        self._failures.move_to_end(key)
        while len(self._failures) > self.MAX_KEYS:
            self._failures.popitem(last=False)

    def succeeded(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)

    async def check(self, key: tuple[str, str]) -> int:
        """retry_after, as the login endpoint awaits it of either throttle."""
        return self.retry_after(key)

    async def record(self, key: tuple[str, str], ok: bool) -> None:
        """Count a failure, or forget the key's failures after a success."""
        if ok:
            self.succeeded(key)
        else:
            self.failed(key)


# Both scripts read the Redis server's clock, so instances whose clocks differ share one window.
# A failure is a member of the key's sorted set, scored in ms; past the window it is dropped.
_CHECK = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then return 0 end
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
return math.max(1, math.floor((oldest + window - now) / 1000) + 1)
"""
_FAIL = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local window = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""


class SharedLoginThrottle:
    """The login throttle's count in Redis: N instances on one REDIS_URL allow 5 guesses, not N*5.

    Keys hold a hash of (client, email), never the email. The process's own LoginThrottle counts
    every failure too; while Redis cannot answer (skipped for PAUSE_S after an error, logged once
    per outage) it decides, so logins go on and an outage does not forget what this process saw.
    """

    PAUSE_S = 5.0

    def __init__(self, client: Any, prefix: str, local: LoginThrottle) -> None:
        self._prefix = prefix
        self.local = local
        self._window_ms = int(local.window_s * 1000)
        self._check = client.register_script(_CHECK)
        self._fail = client.register_script(_FAIL)
        self._delete = client.delete
        self._breaker = Breaker(
            log,
            "login throttle: Redis unavailable, counting in this process only",
            "login throttle: Redis answers again, counts shared",
        )

    def _key(self, key: tuple[str, str]) -> str:
        digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:32]
        return f"{self._prefix}{digest}"

    async def check(self, key: tuple[str, str]) -> int:
        local = self.local.retry_after(key)
        if not self._breaker.usable():
            return local
        try:
            shared = int(
                await self._check(
                    keys=[self._key(key)], args=[self._window_ms, self.local.max_failures]
                )
            )
        except Exception as exc:
            if not redis_client.is_error(exc):
                raise
            self._breaker.failed(exc, self.PAUSE_S)
            return local
        self._breaker.ok()
        return shared  # the count of every instance, a success anywhere included

    async def record(self, key: tuple[str, str], ok: bool) -> None:
        await self.local.record(key, ok)
        if not self._breaker.usable():
            return
        try:
            if ok:
                await self._delete(self._key(key))
            else:
                await self._fail(
                    keys=[self._key(key)],
                    args=[self._window_ms, self.local.max_failures, uuid.uuid4().hex],
                )
        except Exception as exc:
            if not redis_client.is_error(exc):
                raise
            self._breaker.failed(exc, self.PAUSE_S)
            return
        self._breaker.ok()


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320, json_schema_extra={"pattern": NO_NUL})
    # Bounded: argon2 cost grows with input and the endpoint is unauthenticated.
    password: str = Field(min_length=1, max_length=1024)

    _no_nul = field_validator("email")(no_nul)


class TokenResponse(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    access_token: str
    token_type: str = Field(json_schema_extra={"enum": ["Bearer"]})
    expires_in: int = Field(description="Seconds until the token expires.")


async def login(request: Request) -> Response:
    """Exchange email and password for a bearer token."""
    body = await read_json(request, LoginRequest)
    email = body.email.strip().lower()
    throttle: LoginThrottle | SharedLoginThrottle = request.app.state.login_throttle
    key = (request.client.host if request.client else "?", email)
    wait = await throttle.check(key)
    if wait:
        raise TooManyRequests(
            "Too many failed logins; try again later.",
            details={"retryAfter": wait},
            headers={"Retry-After": str(wait)},
        )
    user = await accounts.find_user(request.app.state.db, email)
    stored_hash = user.password_hash if user else dummy_hash()
    ok = await anyio.to_thread.run_sync(verify_password, stored_hash, body.password)
    if not (ok and user):
        await throttle.record(key, ok=False)
        log.info("login failed")  # neither the email nor the password is logged
        raise Unauthorized("Email or password is incorrect.", code="invalid_credentials")
    await throttle.record(key, ok=True)
    tokens: Tokens = request.app.state.tokens
    token = tokens.issue(Principal(user.id, user.org_id, user.email))
    return OrjsonResponse(
        {"accessToken": token, "tokenType": "Bearer", "expiresIn": tokens.ttl_s},
        headers={"Cache-Control": "no-store"},
    )


operations = [
    Operation(
        "POST",
        "/auth/login",
        login,
        summary="Log in with email and password",
        tag="auth",
        body=LoginRequest,
        responses={200: TokenResponse},
        errors=(400, 401, 413, 415, 422, 429),
        auth=False,
    )
]
