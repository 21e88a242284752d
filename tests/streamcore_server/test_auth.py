"""Login, tokens and the password store, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
import pytest
from app_support import PASSWORD, SEED_EXPENSE, Api
from sqlalchemy import select
from waiting import eventually

from streamcore_server.auth import Tokens, load_or_create_secret
from streamcore_server.errors import InvalidToken
from streamcore_server.passwords import verify_password
from streamcore_server.storage import users


def login(api: Api, email: str, password: str) -> Any:
    return api.client.post("/auth/login", json={"email": email, "password": password})


def test_login_returns_a_bearer_token_for_the_user_and_org(api: Api) -> None:
    a = api.tenant("Acme")
    response = login(api, "ACME@example.com ", PASSWORD)  # emails are case-insensitive
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tokenType"] == "Bearer"
    assert body["expiresIn"] == 3600
    assert response.headers["cache-control"] == "no-store"
    principal = api.app.state.tokens.verify_token(body["accessToken"])
    assert (principal.user_id, principal.org_id, principal.email) == (a.user_id, a.org_id, a.email)
    listed = api.client.get(
        "/v1/finance/expenses", headers={"Authorization": f"Bearer {body['accessToken']}"}
    )
    assert listed.status_code == 200


def test_wrong_password_and_unknown_email_answer_the_same(api: Api) -> None:
    api.tenant("Acme")
    wrong = login(api, "acme@example.com", "not the password")
    unknown = login(api, "nobody@example.com", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "invalid_credentials"
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"] == "Bearer"


def test_passwords_are_stored_as_argon2id_hashes(api: Api) -> None:
    api.tenant("Acme")

    async def stored() -> str:
        async with api.app.state.db.connect() as conn:
            return str(await conn.scalar(select(users.c.password_hash)))

    password_hash = api.run(stored)
    assert password_hash.startswith("$argon2id$")
    assert PASSWORD not in password_hash
    assert verify_password(password_hash, PASSWORD)
    assert not verify_password(password_hash, PASSWORD + "x")


def test_no_password_or_token_reaches_the_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    from streamcore_server.logs import JsonFormatter

    api.tenant("Acme")
    caplog.set_level(logging.DEBUG)
    login(api, "acme@example.com", "wrong-password-123")
    token = login(api, "acme@example.com", PASSWORD).json()["accessToken"]
    api.client.get("/v1/finance/expenses", headers={"Authorization": f"Bearer {token}"})
    lines = [JsonFormatter().format(r) for r in caplog.records]
    assert any('"status":401' in line for line in lines)  # the logs did record the requests
    text = "\n".join(lines)
    assert "wrong-password-123" not in text and PASSWORD not in text and token not in text


@pytest.mark.parametrize(
    "body",
    [
        {"email": "a@example.com"},
        {"password": "x"},
        {},
        {"email": "a@b.c", "password": "x", "x": 1},
    ],
)
def test_login_validates_its_body(sqlite_api: Api, body: dict[str, Any]) -> None:
    response = sqlite_api.client.post("/auth/login", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_failed"


def test_an_email_with_nul_is_a_422_on_every_database(api: Api) -> None:
    # PostgreSQL's text cannot hold U+0000: looked up as is, it would fail in the driver (500).
    response = api.client.post("/auth/login", json={"email": "a\x00@b.c", "password": "x"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == "email"


def test_login_body_errors(sqlite_api: Api) -> None:
    client = sqlite_api.client
    malformed = client.post(
        "/auth/login", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "malformed_json"
    form = client.post("/auth/login", data={"email": "a", "password": "b"})
    assert form.status_code == 415


def test_repeated_failures_are_throttled_with_429(api_factory: Any, sqlite_url: str) -> None:
    api = api_factory(sqlite_url, login_max_failures=3)
    api.tenant("Acme")
    for _ in range(3):
        assert login(api, "acme@example.com", "nope-nope").status_code == 401
    # Even the right password is refused now: the throttle runs before the password check.
    refused = login(api, "acme@example.com", PASSWORD)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_requests"
    assert 1 <= int(refused.headers["retry-after"]) <= 300
    # Another account from the same client is not locked out by it.
    api.tenant("Bravo")
    assert login(api, "bravo@example.com", PASSWORD).status_code == 200


SECRET = "s" * 40


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "streamcore",
        "sub": "1",
        "org": 1,
        "email": "a@b.c",
        "iat": now,
        "exp": now + 60,
    } | changes


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256"),
        jwt.encode(claims(), "another secret that is long enough!!", algorithm="HS256"),
        jwt.encode(claims(iss="someone-else"), SECRET, algorithm="HS256"),
        jwt.encode({k: v for k, v in claims().items() if k != "exp"}, SECRET, algorithm="HS256"),
        jwt.encode(claims(org="x"), SECRET, algorithm="HS256"),
        jwt.encode(claims(), None, algorithm="none"),
        "a.b.c",
        "",
    ],
    ids=["expired", "forged", "issuer", "no-exp", "bad-org", "alg-none", "garbage", "empty"],
)
def test_verify_token_rejects(token: str) -> None:
    with pytest.raises(InvalidToken):
        Tokens(SECRET, 60).verify_token(token)


def test_verify_token_accepts_its_own() -> None:
    tokens = Tokens(SECRET, 60)
    from streamcore_server.auth import Principal

    principal = Principal(7, 3, "a@b.c")
    assert tokens.verify_token(tokens.issue(principal)) == principal


@pytest.mark.parametrize(
    ("header", "code"),
    [(None, "unauthorized"), ("Basic dTpw", "invalid_token"), ("Bearer", "invalid_token")],
)
def test_authorization_header_forms(sqlite_api: Api, header: str | None, code: str) -> None:
    headers = {"Authorization": header} if header else {}
    response = sqlite_api.client.get("/v1/finance/expenses", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code
    assert response.headers["www-authenticate"] == "Bearer"


def test_an_expired_token_is_refused_by_the_api(api_factory: Any, sqlite_url: str) -> None:
    api = api_factory(sqlite_url, jwt_secret=SECRET)
    token = jwt.encode(claims(exp=int(time.time()) - 1), SECRET, algorithm="HS256")
    response = api.client.get("/v1/finance/expenses", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["error"] == {
        "code": "invalid_token",
        "message": "The access token has expired.",
        "details": None,
    }


def test_the_generated_secret_is_kept_and_reused(tmp_path: Any) -> None:
    first = load_or_create_secret(str(tmp_path / "var"))
    assert len(first) == 64
    assert (tmp_path / "var" / "jwt_secret").stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(str(tmp_path / "var")) == first


def test_tokens_survive_a_restart(api_factory: Any, sqlite_url: str) -> None:
    first = api_factory(sqlite_url)
    a = first.tenant("Acme")
    second = api_factory(sqlite_url)  # same DATA_DIR, so the same secret
    assert second.client.get("/v1/finance/expenses", headers=a.auth).status_code == 200


def _remove_user(api: Any, user_id: int) -> None:
    from sqlalchemy import delete

    from streamcore_server import storage

    async def remove() -> None:
        async with api.app.state.db.begin() as conn:
            await conn.execute(delete(storage.users).where(storage.users.c.id == user_id))

    api.run(remove)


def test_a_signed_token_of_a_removed_user_is_refused(sqlite_api: Any) -> None:
    t = sqlite_api.tenant("Gone")
    _remove_user(sqlite_api, t.user_id)
    r = sqlite_api.client.get("/v1/finance/expenses", headers=t.auth)
    assert r.status_code == 401, r.text
    assert r.json()["error"] == {
        "code": "invalid_token",
        "message": "The access token's user no longer exists.",
        "details": None,
    }
    # The idempotent write path authenticates the same way: nothing is claimed or stored.
    keyed = {**t.auth, "Idempotency-Key": "gone-1"}
    body = {**SEED_EXPENSE, "propertyId": t.property_id}
    assert (
        sqlite_api.client.post("/v1/finance/expenses", json=body, headers=keyed).status_code == 401
    )
    assert sqlite_api.app.state.idempotency_stats.claims == 0


def test_a_removed_users_token_stops_working_within_the_check_interval(sqlite_api: Any) -> None:
    from waiting import eventually

    from streamcore_server.middleware.authentication import USER_CHECK_S

    t = sqlite_api.tenant("Soon")
    assert sqlite_api.client.get("/v1/finance/expenses", headers=t.auth).status_code == 200
    _remove_user(sqlite_api, t.user_id)
    eventually(
        lambda: sqlite_api.client.get("/v1/finance/expenses", headers=t.auth).status_code == 401,
        "the removed user's token to be refused",
        timeout=USER_CHECK_S * 4,
    )


def test_a_websocket_with_a_removed_users_token_is_refused(sqlite_api: Any) -> None:
    from starlette.testclient import WebSocketDenialResponse

    t = sqlite_api.tenant("GoneWs")
    _remove_user(sqlite_api, t.user_id)
    with (
        pytest.raises(WebSocketDenialResponse) as refused,
        sqlite_api.client.websocket_connect(f"/v2/realtime/stream?access_token={t.token}"),
    ):
        pass
    assert refused.value.status_code == 403
    assert refused.value.json()["error"]["code"] == "invalid_token"


def test_a_verified_token_is_remembered_until_it_expires_and_then_refused() -> None:
    from streamcore_server.auth import Principal

    tokens = Tokens(SECRET, 1)
    token = tokens.issue(Principal(7, 3, "a@b.c"))
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert tokens.verify_token(token) == Principal(7, 3, "a@b.c")
    assert token in tokens._verified  # the next request skips the HMAC and the decoding
    assert tokens.verify_token(token) == Principal(7, 3, "a@b.c")
    eventually(lambda: time.time() >= expires, "the remembered token to reach its exp", 5)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify_token(token)
    assert token not in tokens._verified


def test_only_valid_tokens_are_remembered_and_the_memory_is_bounded() -> None:
    from streamcore_server.auth import Principal

    tokens = Tokens(SECRET, 60)
    with pytest.raises(InvalidToken):
        tokens.verify_token(
            jwt.encode(claims(), "another secret, as long as a key" * 2, algorithm="HS256")
        )
    assert not tokens._verified
    tokens.VERIFIED_MAX = 3
    issued = [tokens.issue(Principal(i, 1, f"u{i}@b.c")) for i in range(1, 6)]
    for token in issued:
        tokens.verify_token(token)
    assert list(tokens._verified) == issued[2:]  # least recently used first out
    assert tokens.verify_token(issued[0]) == Principal(1, 1, "u1@b.c")  # verified afresh
