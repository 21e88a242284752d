"""Accounts (orgs, users, properties), the expense and revenue ledgers, running totals.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the types at this revision: later edits to streamcore_server.storage must not
# rewrite history.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Instant = sa.DateTime(timezone=True)


def _id() -> sa.Column[int]:
    return sa.Column("id", Id, primary_key=True, autoincrement=True, nullable=False)


def _entries(name: str, date_column: str) -> None:
    op.create_table(
        name,
        _id(),
        sa.Column("org_id", Id, sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("property_id", Id, sa.ForeignKey("properties.id"), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(date_column, Instant, nullable=False),
        sa.Column("payment_mode", sa.String(32), nullable=False),
        sa.Column("created_at", Instant, nullable=False),
        sa.Column("created_by", Id, sa.ForeignKey("users.id"), nullable=False),
    )
    op.create_index(f"ix_{name}_property_date_id", name, ["property_id", date_column, "id"])
    op.create_index(f"ix_{name}_org_date_id", name, ["org_id", date_column, "id"])


def upgrade() -> None:
    op.create_table(
        "orgs",
        _id(),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", Instant, nullable=False),
    )
    op.create_table(
        "users",
        _id(),
        sa.Column("org_id", Id, sa.ForeignKey("orgs.id"), nullable=False, index=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", Instant, nullable=False),
    )
    op.create_table(
        "properties",
        _id(),
        sa.Column("org_id", Id, sa.ForeignKey("orgs.id"), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", Instant, nullable=False),
        sa.UniqueConstraint("org_id", "name"),
    )
    _entries("expenses", "expense_date")
    _entries("revenues", "revenue_date")
    op.create_table(
        "property_totals",
        sa.Column("property_id", Id, sa.ForeignKey("properties.id"), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("expenses_cents", sa.BigInteger(), nullable=False),
        sa.Column("revenues_cents", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    for name in ("property_totals", "revenues", "expenses", "properties", "users", "orgs"):
        op.drop_table(name)
