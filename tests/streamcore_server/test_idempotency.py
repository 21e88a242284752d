"""Idempotency-Key on the finance writes: each store (embedded, Redis) on each dialect."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from app_support import SEED_EXPENSE, Api, expense
from idempotency_support import (
    PATH,
    burst,
    delete_prefix,
    keyed,
    new_key,
    rows,
)
from sqlalchemy import select
from waiting import eventually, when

from streamcore_server import accounts, idempotency, storage
from streamcore_server.auth import Principal
from streamcore_server.openapi import IDEMPOTENCY_KEY_PATTERN
from streamcore_server.settings import Settings, SettingsError


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def store_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Settings for the store under test; the Redis one gets a key prefix of its own."""
    if request.param == "embedded":
        yield {}
        return
    url: str = request.getfixturevalue("redis_url")
    prefix = f"test:idem:{uuid.uuid4().hex}:"
    yield {"redis_url": url, "idempotency_redis_prefix": prefix}
    delete_prefix(url, prefix)


@pytest.fixture
def idem(api_factory: Any, database_url: str, store_settings: dict[str, Any]) -> Api:
    return api_factory(database_url, **store_settings)  # type: ignore[no-any-return]


def test_the_seed_guide_scenarios(idem: Api) -> None:
    a = idem.tenant("Acme")
    headers = keyed(a, new_key())
    first = idem.client.post(PATH, json=expense(a), headers=headers)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers

    second = idem.client.post(PATH, json=expense(a), headers=headers)
    assert second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]

    different = expense(
        a,
        category="utilities",
        amountCents=75000,
        description="Different expense",
        paymentMode="upi",
    )
    third = idem.client.post(PATH, json=different, headers=headers)
    assert third.status_code == 409
    assert third.json()["error"]["code"] == "idempotency_key_reused"
    assert rows(idem) == 1
    assert len([e for e in idem.events if e.payload and b"expense.created" in e.payload]) == 1


def test_without_a_key_every_post_writes(idem: Api) -> None:
    a = idem.tenant("Acme")
    for _ in range(2):
        response = idem.client.post(PATH, json=expense(a), headers=a.auth)
        assert response.status_code == 201
        assert "idempotent-replayed" not in response.headers
    assert rows(idem) == 2


def test_fifty_concurrent_posts_with_one_key_write_one_row(idem: Api) -> None:
    a = idem.tenant("Acme")
    responses = burst(idem, 50, PATH, expense(a), keyed(a, new_key()))
    originals = [
        r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    replays = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    waiting = [r for r in responses if r.status_code == 409]
    assert len(originals) == 1
    assert len(originals) + len(replays) + len(waiting) == 50
    assert all(r.content == originals[0].content for r in replays)
    for r in waiting:
        assert r.json()["error"]["code"] == "idempotency_request_in_progress"
        assert int(r.headers["retry-after"]) >= 1
    assert rows(idem) == 1


def test_amount_1000_then_1001_is_a_conflict_and_writes_nothing(idem: Api) -> None:
    a = idem.tenant("Acme")
    headers = keyed(a, new_key())
    assert (
        idem.client.post(PATH, json=expense(a, amountCents=1000), headers=headers).status_code
        == 201
    )
    again = idem.client.post(PATH, json=expense(a, amountCents=1001), headers=headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "idempotency_key_reused"
    assert rows(idem) == 1
    assert idem.app.state.idempotency_stats.mismatches == 1


def test_json_key_order_and_whitespace_do_not_change_the_fingerprint(idem: Api) -> None:
    a = idem.tenant("Acme")
    headers = {**keyed(a, new_key()), "Content-Type": "application/json"}
    body = expense(a)
    first = idem.client.post(PATH, content=orjson.dumps(body), headers=headers)
    shuffled = dict(reversed(list(body.items())))
    spaced = orjson.dumps(shuffled, option=orjson.OPT_INDENT_2)
    second = idem.client.post(PATH, content=spaced, headers=headers)
    assert first.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert rows(idem) == 1


def test_a_validation_failure_is_not_stored_so_the_corrected_body_goes_through(idem: Api) -> None:
    a = idem.tenant("Acme")
    headers = keyed(a, new_key())
    bad = idem.client.post(PATH, json=expense(a, currency="inr"), headers=headers)
    assert bad.status_code == 422
    malformed = idem.client.post(
        PATH, content=b"{", headers={**headers, "Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    good = idem.client.post(PATH, json=expense(a), headers=headers)
    assert good.status_code == 201
    assert "idempotent-replayed" not in good.headers
    assert rows(idem) == 1


def test_a_business_404_is_stored_and_replayed(idem: Api) -> None:
    a = idem.tenant("Acme")
    headers = keyed(a, new_key())
    first = idem.client.post(PATH, json=expense(a, propertyId=10**9), headers=headers)
    assert first.status_code == 404
    second = idem.client.post(PATH, json=expense(a, propertyId=10**9), headers=headers)
    assert second.status_code == 404
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content


def test_keys_are_scoped_to_org_user_and_route(idem: Api) -> None:
    a, b = idem.tenant("Acme"), idem.tenant("Bravo")
    key = new_key()
    assert idem.client.post(PATH, json=expense(a), headers=keyed(a, key)).status_code == 201
    other_org = idem.client.post(PATH, json=expense(b), headers=keyed(b, key))
    assert other_org.status_code == 201
    assert "idempotent-replayed" not in other_org.headers

    async def colleague() -> int:
        async with idem.app.state.db.begin() as conn:
            return await accounts.create_user(conn, a.org_id, "ann@acme.test", "correct horse")

    user = idem.run(colleague)
    token = idem.app.state.tokens.issue(Principal(user, a.org_id, "ann@acme.test"))
    same_org = idem.client.post(
        PATH,
        json=expense(a),
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
    )
    assert same_org.status_code == 201
    assert "idempotent-replayed" not in same_org.headers
    assert rows(idem) == 3

    revenue = expense(a, category="rent")
    revenue["revenueDate"] = revenue.pop("expenseDate")
    other_route = idem.client.post("/v1/finance/revenues", json=revenue, headers=keyed(a, key))
    assert other_route.status_code == 409
    assert other_route.json()["error"]["code"] == "idempotency_key_reused"
    assert rows(idem, storage.revenues) == 0


BAD_HEADERS = {
    "two fields": [("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    "two equal fields": [("Idempotency-Key", "a"), ("Idempotency-Key", "a")],
    "empty": [("Idempotency-Key", "")],
    "only spaces": [("Idempotency-Key", "   ")],
    "256 characters": [("Idempotency-Key", "k" * 256)],
    "inner space": [("Idempotency-Key", "a b")],
    "control character": [("Idempotency-Key", b"a\x01b")],
    "not ASCII": [("Idempotency-Key", "clé".encode())],
    "empty quoted": [("Idempotency-Key", '""')],
    "unterminated quote": [("Idempotency-Key", '"abc')],
    "bad escape": [("Idempotency-Key", '"a\\bc"')],
    "quoted space": [("Idempotency-Key", '"a b"')],
    "with parameters": [("Idempotency-Key", '"abc";p=1')],
}


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=list(BAD_HEADERS))
def test_a_bad_key_is_400_and_the_handler_does_not_run(
    sqlite_api: Api, header: list[tuple[str, Any]]
) -> None:
    a = sqlite_api.tenant("Acme")
    headers = [*a.auth.items(), *header]
    response = sqlite_api.client.post(PATH, json=expense(a), headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "idempotency_key_invalid"
    assert rows(sqlite_api) == 0


def test_the_longest_key_and_the_quoted_form_are_accepted(sqlite_api: Api) -> None:
    a = sqlite_api.tenant("Acme")
    longest = "~" + "k" * 253 + "!"
    assert (
        sqlite_api.client.post(PATH, json=expense(a), headers=keyed(a, longest)).status_code == 201
    )
    quoted = sqlite_api.client.post(PATH, json=expense(a, amountCents=7), headers=keyed(a, '"k-1"'))
    bare = sqlite_api.client.post(PATH, json=expense(a, amountCents=7), headers=keyed(a, "k-1"))
    assert quoted.status_code == 201
    assert bare.headers["idempotent-replayed"] == "true"  # "k-1" and k-1 are the same key
    escaped = sqlite_api.client.post(
        PATH, json=expense(a, amountCents=8), headers=keyed(a, r'"q\"\\"')
    )
    bare_escaped = sqlite_api.client.post(
        PATH, json=expense(a, amountCents=8), headers=keyed(a, 'q"\\')
    )
    assert escaped.status_code == 201
    assert bare_escaped.headers["idempotent-replayed"] == "true"
    assert rows(sqlite_api) == 3


def test_a_key_without_credentials_is_answered_401_as_before(sqlite_api: Api) -> None:
    response = sqlite_api.client.post(PATH, json=SEED_EXPENSE, headers={"Idempotency-Key": "k"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_the_ietf_status_422_for_a_reused_key_is_a_setting(
    api_factory: Any, sqlite_url: str
) -> None:
    api = api_factory(sqlite_url, idempotency_mismatch_status=422)
    a = api.tenant("Acme")
    headers = keyed(a, new_key())
    assert (
        api.client.post(PATH, json=expense(a, amountCents=1000), headers=headers).status_code == 201
    )
    reused = api.client.post(PATH, json=expense(a, amountCents=1001), headers=headers)
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    document = api.client.get("/openapi.json").json()
    assert (
        "idempotency_key_reused"
        in document["paths"][PATH]["post"]["responses"]["422"]["description"]
    )


def test_the_document_describes_the_header_and_its_answers(sqlite_api: Api) -> None:
    operation = sqlite_api.client.get("/openapi.json").json()["paths"][PATH]["post"]
    (header,) = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"] == "Idempotency-Key"
    # The parser's rule exactly (tests/streamcore_server/test_openapi.py checks the two agree).
    assert header["schema"]["pattern"] == IDEMPOTENCY_KEY_PATTERN
    assert "maxLength" not in header["schema"]  # a quoted key may run past 255 characters
    responses = operation["responses"]
    assert "idempotency_request_in_progress" in responses["409"]["description"]
    assert "Retry-After" in responses["409"]["headers"]
    assert "idempotency_key_invalid" in responses["400"]["description"]
    assert "Idempotent-Replayed" in responses["201"]["headers"]
    assert "Idempotent-Replayed" not in responses["422"].get("headers", {})


def _claim_as_a_running_request(api: Api, who: Any, key: str, body: dict[str, Any]) -> None:
    store = api.app.state.idempotency
    fp = idempotency.fingerprint("POST", PATH, orjson.dumps(body))
    claim = store.new_claim(who.org_id, who.user_id, key, fp, "POST", PATH)
    assert isinstance(api.run(store.claim, claim), idempotency.Claim)


def test_a_running_request_blocks_the_key_until_its_lease_lapses(
    api_factory: Any, database_url: str, store_settings: dict[str, Any]
) -> None:
    api = api_factory(database_url, idempotency_lease_s=2.0, **store_settings)
    a = api.tenant("Acme")
    key = new_key()
    # A request that claimed the key and then died without a word (a crashed worker).
    _claim_as_a_running_request(api, a, key, expense(a))
    busy = api.client.post(PATH, json=expense(a), headers=keyed(a, key))
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "idempotency_request_in_progress"
    assert 1 <= int(busy.headers["retry-after"]) <= 2  # the lease's rest, rounded up
    other = api.client.post(PATH, json=expense(a, amountCents=1), headers=keyed(a, key))
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert rows(api) == 0
    # The lease is seconds, not the record's 24 h: the key frees itself. Until then a retry is
    # answered "in progress" and changes nothing, so retrying is how a client finds out.
    freed = eventually(
        lambda: when(api.client.post(PATH, json=expense(a), headers=keyed(a, key)), 201),
        "the lease to lapse",
        timeout=30,
    )
    assert freed.status_code == 201, freed.text
    assert rows(api) == 1


def test_a_record_expires_after_the_ttl(api_factory: Any, database_url: str) -> None:
    api = api_factory(database_url)
    a = api.tenant("Acme")
    headers = keyed(a, new_key())
    assert api.client.post(PATH, json=expense(a, amountCents=5), headers=headers).status_code == 201
    store = api.app.state.idempotency
    store.clock = lambda: time.time() + Settings().idempotency_ttl_s + 1  # a day later
    later = api.client.post(PATH, json=expense(a, amountCents=6), headers=headers)
    assert later.status_code == 201  # an expired record is an unrelated key
    assert "idempotent-replayed" not in later.headers
    assert rows(api) == 2

    async def purge() -> list[Any]:
        store._next_purge = 0.0
        store.clock = lambda: time.time() + 3 * Settings().idempotency_ttl_s
        await store._maybe_purge()
        async with api.app.state.db.connect() as conn:
            return list(await conn.execute(select(storage.idempotency_records)))

    assert api.run(purge) == []


@pytest.mark.redis
def test_a_redis_record_expires_after_a_short_ttl(
    api_factory: Any, sqlite_url: str, redis_url: str
) -> None:
    prefix = f"test:idem:{uuid.uuid4().hex}:"
    try:
        api = api_factory(
            sqlite_url,
            redis_url=redis_url,
            idempotency_redis_prefix=prefix,
            idempotency_ttl_s=3,
            idempotency_lease_s=0.5,
        )
        a = api.tenant("Acme")
        headers = keyed(a, new_key())
        assert api.client.post(PATH, json=expense(a), headers=headers).status_code == 201
        replay = api.client.post(PATH, json=expense(a), headers=headers)
        assert replay.headers["idempotent-replayed"] == "true"
        # Another body under the key is refused while the record lives, accepted once it expired.
        later = eventually(
            lambda: when(
                api.client.post(PATH, json=expense(a, amountCents=9), headers=headers), 201
            ),
            "the record to expire",
            timeout=30,
        )
        assert later.status_code == 201
        assert "idempotent-replayed" not in later.headers
        assert rows(api) == 2
    finally:
        delete_prefix(redis_url, prefix)


def test_settings_read_and_check_the_idempotency_variables() -> None:
    s = Settings.from_env(
        {
            "IDEMPOTENCY_TTL_S": "60",
            "IDEMPOTENCY_LEASE_S": "2.5",
            "IDEMPOTENCY_MISMATCH_STATUS": "422",
        }
    )
    assert (s.idempotency_ttl_s, s.idempotency_lease_s, s.idempotency_mismatch_status) == (
        60,
        2.5,
        422,
    )
    assert Settings().idempotency_ttl_s == 24 * 3600
    with pytest.raises(SettingsError, match="IDEMPOTENCY_MISMATCH_STATUS"):
        Settings.from_env({"IDEMPOTENCY_MISMATCH_STATUS": "400"})
    with pytest.raises(SettingsError, match="IDEMPOTENCY_LEASE_S"):
        Settings.from_env({"IDEMPOTENCY_TTL_S": "5", "IDEMPOTENCY_LEASE_S": "5"})
    with pytest.raises(SettingsError, match="IDEMPOTENCY_TTL_S"):
        Settings.from_env({"IDEMPOTENCY_TTL_S": "0"})


def test_the_fingerprint_covers_method_route_and_meaning() -> None:
    fp = idempotency.fingerprint
    assert fp("POST", "/a", b'{"x": 1, "y": [1, 2]}') == fp("POST", "/a", b'{"y":[1,2],"x":1}')
    assert fp("POST", "/a", b'{"x": 1}') != fp("POST", "/b", b'{"x": 1}')
    assert fp("POST", "/a", b'{"x": 1}') != fp("PUT", "/a", b'{"x": 1}')
    assert fp("POST", "/a", b'{"x": 1000}') != fp("POST", "/a", b'{"x": 1001}')
    assert fp("POST", "/a", b'{"x": [1, 2]}') != fp("POST", "/a", b'{"x": [2, 1]}')
    assert fp("POST", "/a", b"{") != fp("POST", "/a", b"{ ")  # not JSON: the bytes count
    # Length-prefixed parts: moving a byte from the route into the body changes the digest.
    assert fp("POST", "/ab", b"1") != fp("POST", "/a", b"b1")


@pytest.mark.postgres
def test_concurrent_claims_share_a_statement_and_a_key_is_claimed_once(
    pg_database: str, tmp_path: Any
) -> None:
    """PostgreSQL: claims arriving while one is in flight go as one statement; a key twice in
    a batch is claimed once, the other sees it in progress; a stored record is replayed."""
    import asyncio

    async def run() -> tuple[list[Any], int, int]:
        engine = storage.create_engine(pg_database)
        try:
            await storage.migrate(engine)
            settings = Settings(database_url=pg_database, data_dir=str(tmp_path))
            store = idempotency.DatabaseStore(engine, settings, idempotency.Stats())
            done = store.new_claim(1, 1, "stored", "f" * 64, "POST", "/r")
            assert isinstance(await store.claim(done), idempotency.Claim)
            await store.save(done, idempotency.Stored(201, (), b"{}"))
            keys = [f"k{i}" for i in range(20)] + ["k3", "stored"]
            claims = [store.new_claim(1, 1, k, "f" * 64, "POST", "/r") for k in keys]
            before = (store._claims.statements, store._claims.writes)
            outcomes = await asyncio.gather(*(store.claim(c) for c in claims))
            statements = store._claims.statements - before[0]
            writes = store._claims.writes - before[1]
            return list(outcomes), statements, writes
        finally:
            await engine.dispose()

    outcomes, statements, writes = asyncio.run(run())
    assert writes >= 22 and statements < writes  # several claims per statement
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds[:20] == ["Claim"] * 20
    assert kinds[20] == "InProgress"  # k3 again: the first k3 holds it
    assert kinds[21] == "Replay" and outcomes[21].stored.body == b"{}"
