"""Alembic's script folder for the store (package data): env.py and versions/, driven in code by
`gateway.schema_versions`; no alembic.ini. Two independent branches share one version table:
`trail` (the audit trail and the rate limiter's counters, which every backend needs) and `engine`
(the local credential engine's registry and credentials)."""
