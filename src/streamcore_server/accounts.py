"""Organisations, their users and properties: created by the CLI, read by auth and finance."""

from __future__ import annotations

from dataclasses import dataclass

import anyio.to_thread
from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .passwords import hash_password
from .storage import orgs, properties, users, utcnow

DEMO_ORG = "Demo"
DEMO_PROPERTY = "Demo Property"
DEMO_EMAIL = "user@example.com"
DEMO_PASSWORD = "changeme"  # the seed's testing guide logs in with it; demo data only


class AccountError(ValueError):
    """A CLI request that cannot be carried out (unknown org, duplicate email, ...)."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    org_id: int
    email: str
    password_hash: str


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        raise AccountError(f"{email!r} is not an email address")
    return email


async def create_org(conn: AsyncConnection, name: str) -> int:
    """Create an organisation; its name must be unique."""
    name = name.strip()
    if not name:
        raise AccountError("an org needs a name")
    if await conn.scalar(select(orgs.c.id).where(orgs.c.name == name)) is not None:
        raise AccountError(f"an org named {name!r} already exists")
    result = await conn.execute(
        insert(orgs).values(name=name, created_at=utcnow()).returning(orgs.c.id)
    )
    return int(result.scalar_one())


async def resolve_org(conn: AsyncConnection, ref: str) -> int:
    """Find an org by id or by exact name."""
    query = select(orgs.c.id).where(orgs.c.name == ref)
    if ref.isdigit():
        query = select(orgs.c.id).where(orgs.c.id == int(ref))
    org_id = await conn.scalar(query)
    if org_id is None:
        raise AccountError(f"no org {ref!r}")
    return int(org_id)


async def create_user(conn: AsyncConnection, org_id: int, email: str, password: str) -> int:
    """Create a user in an org, storing only the argon2id hash of the password."""
    email = normalise_email(email)
    if len(password) < 8 and password != DEMO_PASSWORD:
        raise AccountError("a password needs at least 8 characters")
    if await conn.scalar(select(users.c.id).where(users.c.email == email)) is not None:
        raise AccountError(f"a user with email {email!r} already exists")
    password_hash = await anyio.to_thread.run_sync(hash_password, password)
    result = await conn.execute(
        insert(users)
        .values(org_id=org_id, email=email, password_hash=password_hash, created_at=utcnow())
        .returning(users.c.id)
    )
    return int(result.scalar_one())


async def create_property(conn: AsyncConnection, org_id: int, name: str) -> int:
    """Create a property in an org."""
    name = name.strip()
    if not name:
        raise AccountError("a property needs a name")
    result = await conn.execute(
        insert(properties)
        .values(org_id=org_id, name=name, created_at=utcnow())
        .returning(properties.c.id)
    )
    return int(result.scalar_one())


async def find_user(engine: AsyncEngine, email: str) -> User | None:
    """Look a user up by (normalised) email."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(users.c.id, users.c.org_id, users.c.email, users.c.password_hash).where(
                    users.c.email == email.strip().lower()
                )
            )
        ).first()
    return User(int(row.id), int(row.org_id), row.email, row.password_hash) if row else None


TOTALS_VERSION = select(properties.c.totals_version).where(
    properties.c.id == bindparam("property_id"), properties.c.org_id == bindparam("org_id")
)


async def totals_version(conn: AsyncConnection, property_id: int, org_id: int) -> int | None:
    """The property's totals version (writes so far), or None if it is not the org's."""
    found = await conn.scalar(TOTALS_VERSION, {"property_id": property_id, "org_id": org_id})
    return None if found is None else int(found)


async def property_in_org(conn: AsyncConnection, property_id: int, org_id: int) -> bool:
    """Whether the property exists and belongs to the org (callers answer 404 either way)."""
    return await totals_version(conn, property_id, org_id) is not None


async def is_empty(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return not await conn.scalar(select(func.count()).select_from(orgs))


async def seed_demo(engine: AsyncEngine) -> bool:
    """Create the demo org, property and user of the testing guide; False if already there."""
    async with engine.begin() as conn:
        if await conn.scalar(select(users.c.id).where(users.c.email == DEMO_EMAIL)) is not None:
            return False
        org_id = await conn.scalar(select(orgs.c.id).where(orgs.c.name == DEMO_ORG))
        if org_id is None:
            org_id = await create_org(conn, DEMO_ORG)
        has_property = await conn.scalar(
            select(properties.c.id).where(
                properties.c.org_id == org_id, properties.c.name == DEMO_PROPERTY
            )
        )
        if has_property is None:
            await create_property(conn, org_id, DEMO_PROPERTY)
        await create_user(conn, org_id, DEMO_EMAIL, DEMO_PASSWORD)
    return True
