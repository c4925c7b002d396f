"""The audit trail and the rate limiter's counters, as the gateway made them before migrations.

Revision ID: trail_0001
Revises: none (the base of the `trail` branch, which every backend needs)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "trail_0001"
down_revision: str | None = None
branch_labels = ("trail",)
depends_on: str | None = None

metadata = sa.MetaData()
"""The tables as this revision makes them, frozen here (the live declarations in gateway/audit.py
and gateway/rate_limits.py move on with later revisions). A store made before migrations is
compared with them before it is adopted (`gateway.schema_versions`)."""

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("caller", sa.String(255), nullable=True),
    sa.Column("client_id", sa.String(255), nullable=True),
    sa.Column("study_id", sa.String(100), nullable=True),
    sa.Column("mode", sa.String(100), nullable=True),
    sa.Column("subject_id", sa.String(100), nullable=True),
    sa.Column("inventory_id", sa.String(100), nullable=True),
    sa.Column("access_id", sa.String(100), nullable=True),
    sa.Column("attempt_seq", sa.BigInteger, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

rate_counters = sa.Table(
    "rate_counters",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
)


def upgrade() -> None:
    metadata.create_all(op.get_bind(), checkfirst=False)
    # The chain's head exists with its table (as gateway/audit.py's after_create does): no batch races to make it.
    op.bulk_insert(audit_head, [{"id": 1, "seq": 0, "hash": "0" * 64}])


def downgrade() -> None:
    metadata.drop_all(op.get_bind(), checkfirst=False)
