"""Each property's running totals as one value on its row, moved by the write that bumps it.

The write reads them back from the UPDATE that locks the row, so a writer that waited for
another one still returns exactly its own version's totals in the same single statement.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Totals = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("properties") as batch:
        batch.add_column(sa.Column("totals", Totals, nullable=False, server_default="{}"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE properties p SET totals = t.totals FROM ("
            " SELECT property_id, jsonb_object_agg("
            "  currency, jsonb_build_array(expenses_cents, revenues_cents)) AS totals"
            " FROM property_totals GROUP BY property_id) t WHERE t.property_id = p.id"
        )
    else:
        op.execute(
            "UPDATE properties SET totals = (SELECT json_group_object("
            " currency, json_array(expenses_cents, revenues_cents)) FROM property_totals"
            " WHERE property_id = properties.id)"
            " WHERE id IN (SELECT property_id FROM property_totals)"
        )


def downgrade() -> None:
    with op.batch_alter_table("properties") as batch:
        batch.drop_column("totals")
