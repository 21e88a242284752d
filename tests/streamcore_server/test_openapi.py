"""The OpenAPI document describes every endpoint, and the app answers as it says."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import pytest
from app_support import SEED_EXPENSE, Api, Tenant, expense
from starlette.routing import Route
from starlette.testclient import TestClient

from streamcore_server.main import create_app
from streamcore_server.settings import Settings

Case = Callable[[Api, Tenant], Any]


def entry(t: Tenant, kind: str, **changes: Any) -> dict[str, Any]:
    body = expense(t, **changes)
    if kind == "revenues":
        body["revenueDate"] = body.pop("expenseDate")
    return body


def write_cases(kind: str) -> dict[int, Case]:
    path = f"/v1/finance/{kind}"
    return {
        201: lambda api, t: api.client.post(path, json=entry(t, kind), headers=t.auth),
        400: lambda api, t: api.client.post(
            path, content=b"{", headers={**t.auth, "Content-Type": "application/json"}
        ),
        401: lambda api, t: api.client.post(path, json=entry(t, kind)),
        404: lambda api, t: api.client.post(
            path, json=entry(t, kind, propertyId=10**9), headers=t.auth
        ),
        413: lambda api, t: api.client.post(
            path, json=entry(t, kind, description="x" * 900), headers=t.auth
        ),
        415: lambda api, t: api.client.post(path, data={"a": "b"}, headers=t.auth),
        422: lambda api, t: api.client.post(path, json={}, headers=t.auth),
        409: lambda api, t: [
            api.client.post(
                path,
                json=entry(t, kind, amountCents=amount),
                headers={**t.auth, "Idempotency-Key": f"contract-{kind}"},
            )
            for amount in (1000, 1001)
        ][-1],
    }


def read_cases(path: str) -> dict[int, Case]:
    return {
        200: lambda api, t: api.client.get(
            path, params={"propertyId": t.property_id}, headers=t.auth
        ),
        400: lambda api, t: api.client.get(
            path, params={"propertyId": t.property_id, "cursor": "!"}, headers=t.auth
        ),
        401: lambda api, t: api.client.get(path),
        404: lambda api, t: api.client.get(path, params={"propertyId": 10**9}, headers=t.auth),
        422: lambda api, t: api.client.get(path, params={"propertyId": "x"}, headers=t.auth),
    }


def publish_cases() -> dict[int, Case]:
    path = "/v2/realtime/publish"

    def events(t: Tenant, **kw: Any) -> dict[str, Any]:
        return {"events": [{"type": "note", "key": "k", "data": 1, **kw}]}

    return {
        202: lambda api, t: api.client.post(path, json=events(t), headers=t.auth),
        400: lambda api, t: api.client.post(
            path, content=b"{", headers={**t.auth, "Content-Type": "application/json"}
        ),
        401: lambda api, t: api.client.post(path, json=events(t)),
        404: lambda api, t: api.client.post(path, json=events(t, propertyId=10**9), headers=t.auth),
        413: lambda api, t: api.client.post(path, json=events(t, data="x" * 900), headers=t.auth),
        415: lambda api, t: api.client.post(path, data={"a": "b"}, headers=t.auth),
        422: lambda api, t: api.client.post(path, json={"events": []}, headers=t.auth),
        # The degraded app's Redis refuses connections: the fan-out cannot take the events.
        503: lambda api, t: api.degraded.post(  # type: ignore[union-attr]
            path, json=events(t), headers=t.auth
        ),
    }


def login(email: str, password: str) -> Case:
    return lambda api, t: api.client.post(
        "/auth/login", json={"email": email, "password": password}
    )


# Every (method, path, status) the document promises, and a request that should produce it.
CASES: dict[tuple[str, str], dict[int, Case]] = {
    ("get", "/healthz"): {200: lambda api, t: api.client.get("/healthz")},
    ("get", "/readyz"): {
        200: lambda api, t: api.client.get("/readyz"),
        503: lambda api, t: api.degraded.get("/readyz"),  # type: ignore[union-attr]
    },
    ("get", "/openapi.json"): {200: lambda api, t: api.client.get("/openapi.json")},
    ("get", "/docs"): {200: lambda api, t: api.client.get("/docs")},
    ("post", "/auth/login"): {
        200: login("acme@example.com", "correct horse battery"),
        400: lambda api, t: api.client.post(
            "/auth/login", content=b"[", headers={"Content-Type": "application/json"}
        ),
        401: login("acme@example.com", "wrong"),
        413: login("acme@example.com", "p" * 1000),
        415: lambda api, t: api.client.post("/auth/login", content=b"{}"),
        422: lambda api, t: api.client.post("/auth/login", json={"email": "a@b.c"}),
        429: lambda api, t: [login("bravo@example.com", "wrong")(api, t) for _ in range(6)][-1],
    },
    ("post", "/v1/finance/expenses"): write_cases("expenses"),
    ("get", "/v1/finance/expenses"): read_cases("/v1/finance/expenses"),
    ("post", "/v1/finance/revenues"): write_cases("revenues"),
    ("get", "/v1/finance/revenues"): read_cases("/v1/finance/revenues"),
    ("post", "/v2/realtime/publish"): publish_cases(),
    ("get", "/v1/finance/summary"): {
        s: c for s, c in read_cases("/v1/finance/summary").items() if s != 400
    },
    ("get", "/v1/system/metrics/aggregated"): {
        200: lambda api, t: api.client.get("/v1/system/metrics/aggregated")
    },
    ("get", "/v1/system/metrics/prometheus"): {
        200: lambda api, t: api.client.get("/v1/system/metrics/prometheus")
    },
}


@pytest.fixture
def degraded(database_url: str, tmp_path: Any) -> Iterator[TestClient]:
    """The same app with a Redis that refuses connections: what /readyz's 503 looks like."""
    settings = Settings(
        database_url=database_url, data_dir=str(tmp_path / "var"), redis_url="redis://127.0.0.1:1/0"
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def api(api_factory: Any, database_url: str, degraded: TestClient) -> Api:
    # A small body limit, so a 413 is cheap to provoke.
    api: Api = api_factory(database_url, max_body_bytes=800)
    api.degraded = degraded
    return api


def test_every_route_is_documented(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    served = {
        (method.lower(), route.path)
        for route in api.app.routes
        if isinstance(route, Route) and route.include_in_schema  # pages (/dashboard) are not
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert served == documented
    assert documented == set(CASES)  # and this test has a request for every one of them


def test_documented_limits_are_the_settings_in_force(api: Api) -> None:
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["ExpenseIn"]["properties"]["amountCents"]["maximum"] == 100_000_000_000
    assert "x-maximum-setting" not in str(schemas)
    assert set(schemas["ExpenseIn"]["required"]) == {
        "propertyId",
        "category",
        "amountCents",
        "currency",
        "expenseDate",
        "paymentMode",
    }
    assert schemas["ExpenseIn"]["additionalProperties"] is False


def test_the_app_answers_as_the_document_says(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    a = api.tenant("Acme")
    api.tenant("Bravo")
    checked = set()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            documented = {int(s) for s in operation["responses"]}
            cases = CASES[(method, path)]
            assert set(cases) == documented, (method, path)
            for status, case in cases.items():
                response = case(api, a)
                where = f"{method.upper()} {path} -> {status}"
                assert response.status_code == status, f"{where}: {response.text}"
                spec = operation["responses"][str(status)]
                if "application/json" not in spec["content"]:  # text (the Prometheus export)
                    (media_type,) = spec["content"]
                    assert response.headers["content-type"].startswith(media_type), where
                    checked.add((method, path, status))
                    continue
                schema = spec["content"]["application/json"]["schema"]
                assert response.headers["content-type"].startswith("application/json"), where
                jsonschema.Draft202012Validator(
                    {**schema, "components": document["components"]}
                ).validate(response.json())
                for header, header_spec in spec.get("headers", {}).items():
                    if header_spec.get("required"):  # others are sent only sometimes
                        assert header.lower() in response.headers, where
                checked.add((method, path, status))
    assert len(checked) == sum(len(c) for c in CASES.values())


def test_request_bodies_in_the_document_accept_the_seed_example(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    operation = document["paths"]["/v1/finance/expenses"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator({**schema, "components": document["components"]})
    seed = dict(SEED_EXPENSE)
    validator.validate(seed)
    assert not validator.is_valid({**seed, "currency": "inr"})
    assert not validator.is_valid({**seed, "amountCents": 0})
    assert not validator.is_valid({**seed, "unknown": 1})


def _request_schema(document: dict[str, Any], path: str) -> jsonschema.Draft202012Validator:
    operation = document["paths"][path]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ({"type": "note", "key": "k", "data": 1}, 202),
        ({"type": "note", "conflatable": False, "data": 1}, 202),
        ({"type": "note", "conflatable": False, "key": None, "data": 1}, 202),
        ({"type": "note", "key": "k", "propertyId": 1.0, "data": 1}, 202),  # a JSON integer
        ({"type": "note", "data": 1}, 422),  # conflatable (the default) without a key
        ({"type": "note", "key": None, "conflatable": True, "data": 1}, 422),
        ({"type": "note", "key": "k", "conflatable": 0, "data": 1}, 422),  # not a boolean
        ({"type": "note", "key": "k", "propertyId": "1", "data": 1}, 422),  # not an integer
        ({"type": "note", "key": "k", "propertyId": True, "data": 1}, 422),
    ],
)
def test_the_publish_schema_states_the_key_rule_the_server_enforces(
    sqlite_api: Api, event: dict[str, Any], status: int
) -> None:
    t = sqlite_api.tenant("Acme")
    document = sqlite_api.client.get("/openapi.json").json()
    validator = _request_schema(document, "/v2/realtime/publish")
    body = {"events": [event]}
    response = sqlite_api.client.post("/v2/realtime/publish", json=body, headers=t.auth)
    assert response.status_code == status, response.text
    assert validator.is_valid(body) == (status == 202)


def test_the_documented_idempotency_key_is_exactly_what_the_server_takes() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from streamcore_server.idempotency import InvalidKey, parse_key
    from streamcore_server.openapi import IDEMPOTENCY_KEY_PATTERN

    pattern = re.compile(IDEMPOTENCY_KEY_PATTERN)
    visible = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=260)
    keys = (
        visible
        | visible.map(lambda s: f'"{s}"')
        | st.from_regex(pattern, fullmatch=True)
        | st.sampled_from(['"', '""', '"a', 'a"b', '"a\\"b"', '"a\\b"', "x" * 256, "é"])
    )

    @settings(max_examples=2000, deadline=None)
    @given(keys)
    def agree(key: str) -> None:
        try:
            parse_key([key.encode()])
            taken = True
        except InvalidKey:
            taken = False
        # The server strips the blanks HTTP allows around a field value; a client sends none.
        if key == key.strip(" \t"):
            assert taken == bool(pattern.match(key)), key

    agree()
