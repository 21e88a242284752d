"""Idempotency records: per caller and key, the in-flight claim and the stored response.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "idempotency_records",
        sa.Column("org_id", Id, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("route", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claim_token", sa.String(32)),
        sa.Column("claimed_until_ms", sa.BigInteger()),
        sa.Column("status", sa.Integer()),
        sa.Column("headers", sa.LargeBinary()),
        sa.Column("body", sa.LargeBinary()),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        # The backstop: one record per caller and key, whatever Redis remembers.
        sa.PrimaryKeyConstraint("org_id", "user_id", "key", name="pk_idempotency_records"),
    )
    op.create_index("ix_idempotency_records_expires_ms", "idempotency_records", ["expires_ms"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_records_expires_ms", "idempotency_records")
    op.drop_table("idempotency_records")
