"""The local credential engine's registry and credentials, as the gateway made them before migrations.

Revision ID: engine_0001
Revises: none (the base of the `engine` branch, which only the local engine needs)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "engine_0001"
down_revision: str | None = None
branch_labels = ("engine",)
depends_on: str | None = None

metadata = sa.MetaData()
"""The tables as this revision makes them, frozen here (the live declarations in
gateway/engine/tables.py move on with later revisions). A store made before migrations is
compared with them before it is adopted (`gateway.schema_versions`)."""

# Enums kept as strings (no native type, no CHECK), as the engine declares them.
_mode = sa.Enum("active", "test", "training", name="study_mode", native_enum=False)
_connection = sa.Enum("DEVICE_TO_CLOUD", "CLOUD_TO_CLOUD", "NO_CONNECTION", name="connection_type", native_enum=False)

sa.Table(
    "study_modes",
    metadata,
    sa.Column("study_id", sa.String(32), primary_key=True),
    sa.Column("mode", _mode, primary_key=True),
    sa.Column("mhealth_configured", sa.Boolean, nullable=False),
)

sa.Table(
    "subjects",
    metadata,
    sa.Column("study_id", sa.String(32), primary_key=True),
    sa.Column("mode", _mode, primary_key=True),
    sa.Column("subject_id", sa.String(32), primary_key=True),
    sa.Column("m_subject_id", sa.String(64), nullable=False),
    sa.ForeignKeyConstraint(["study_id", "mode"], ["study_modes.study_id", "study_modes.mode"]),
)

sa.Table(
    "devices",
    metadata,
    sa.Column("study_id", sa.String(32), primary_key=True),
    sa.Column("mode", _mode, primary_key=True),
    sa.Column("inventory_id", sa.String(64), primary_key=True),
    sa.Column("instance_id", sa.String(32), nullable=False),
    sa.Column("connection_type", _connection, nullable=True),
    sa.Column("vendor_code", sa.String(64), nullable=True),
    sa.Column("registered", sa.Boolean, nullable=False),
    sa.Column("dispensed_to", sa.String(32), nullable=True),
    sa.ForeignKeyConstraint(["study_id", "mode"], ["study_modes.study_id", "study_modes.mode"]),
)

sa.Table(
    "credentials",
    metadata,
    sa.Column("study_id", sa.String(32), primary_key=True),
    sa.Column("mode", _mode, primary_key=True),
    sa.Column("inventory_id", sa.String(64), primary_key=True),
    sa.Column("access_id", sa.String(16), nullable=False, unique=True),
    sa.Column("otp_hash", sa.String(255), nullable=False),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("failed_attempts", sa.Integer, nullable=False),
    sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(
        ["study_id", "mode", "inventory_id"], ["devices.study_id", "devices.mode", "devices.inventory_id"]
    ),
)


def upgrade() -> None:
    metadata.create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    metadata.drop_all(op.get_bind(), checkfirst=False)
