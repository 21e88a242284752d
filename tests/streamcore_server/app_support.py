"""Helpers for the app tests: a started app with tenants made through the real account code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.testclient import TestClient

from streamcore_server import accounts
from streamcore_server.auth import Principal
from streamcore_server.events import Event

PASSWORD = "correct horse battery"

# The expense body of the seed's testing guide, as written there.
SEED_EXPENSE = {
    "propertyId": 1,
    "category": "maintenance",
    "amountCents": 50000,
    "currency": "INR",
    "description": "Test expense",
    "expenseDate": "2025-12-13T10:00:00Z",
    "paymentMode": "cash",
}


@dataclass
class Tenant:
    org_id: int
    user_id: int
    email: str
    property_id: int
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Api:
    """A TestClient on a started app, with helpers to create tenants through the real code."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.app: Any = client.app
        self.events: list[Event] = []
        self.degraded: TestClient | None = None  # a second app whose dependencies fail
        self.app.state.events.subscribe(self.events.append)

    def run(self, fn: Any, *args: Any) -> Any:
        return self.client.portal.call(fn, *args)  # type: ignore[union-attr]

    def tenant(self, name: str, password: str = PASSWORD) -> Tenant:
        async def create() -> tuple[int, int, int]:
            async with self.app.state.db.begin() as conn:
                org = await accounts.create_org(conn, name)
                user = await accounts.create_user(
                    conn, org, f"{name.lower()}@example.com", password
                )
                prop = await accounts.create_property(conn, org, f"{name} House")
                return org, user, prop

        org, user, prop = self.run(create)
        email = f"{name.lower()}@example.com"
        token = self.app.state.tokens.issue(Principal(user, org, email))
        return Tenant(org, user, email, prop, token)

    def add_property(self, tenant: Tenant, name: str) -> int:
        async def create() -> int:
            async with self.app.state.db.begin() as conn:
                return await accounts.create_property(conn, tenant.org_id, name)

        return int(self.run(create))


def expense(tenant: Tenant, **changes: Any) -> dict[str, Any]:
    """The seed's expense on this tenant's property, with changes."""
    return {**SEED_EXPENSE, "propertyId": tenant.property_id, **changes}


def revenue(tenant: Tenant, **changes: Any) -> dict[str, Any]:
    """A revenue shaped like the seed's expense, on this tenant's property."""
    body = expense(tenant, category="rent", **changes)
    body["revenueDate"] = body.pop("expenseDate")
    return body
