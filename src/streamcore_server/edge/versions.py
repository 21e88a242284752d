"""Versions a finance read's ETag is made of, each one small indexed query.

Entries are only ever added, and every addition bumps its property's totals version in the
write's transaction, so a property's version names the state of its entries and the sum over an
org's properties names the state of all of the org's entries.
"""

from __future__ import annotations

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import accounts
from ..storage import properties

ORG_VERSION = select(func.coalesce(func.sum(properties.c.totals_version), 0)).where(
    properties.c.org_id == bindparam("org_id")
)


async def summary(conn: AsyncConnection, org_id: int, property_id: int) -> int | None:
    """The property's totals version, or None if it is not the org's (read on conn)."""
    return await accounts.totals_version(conn, property_id, org_id)


async def entries(conn: AsyncConnection, org_id: int, property_id: int | None) -> int | None:
    """Version of one property's entries, or of all the org's; None if not the org's property."""
    if property_id is not None:
        return await summary(conn, org_id, property_id)
    return int(await conn.scalar(ORG_VERSION, {"org_id": org_id}) or 0)
