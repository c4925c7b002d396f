"""Alembic's environment: runs the revisions on the connection `gateway.schema_versions` hands it.

No URL and no logging set-up here: the caller owns the connection (already in its transaction,
holding the migration lock) and the logging. `target_metadata` is every table of the gateway, for
comparisons (`alembic.autogenerate`), so that a new revision can be checked against the code.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from gateway.schema_versions import CONNECTION, target_metadata

connection = context.config.attributes.get(CONNECTION)
if not isinstance(connection, Connection):
    raise RuntimeError("run the gateway's migrations with `gateway migrate` (gateway.schema_versions)")
context.configure(
    connection=connection,
    target_metadata=target_metadata(),
    render_as_batch=True,  # SQLite alters a table by copying it: revisions written for it use batch_alter_table
    compare_type=True,
)
with context.begin_transaction():  # the caller's transaction: Alembic neither begins nor commits
    context.run_migrations()
