"""The local credential engine: rules.py (the service's rules), codes.py (generation and hashing),
store.py (SQLAlchemy Core over SQLite or PostgreSQL) and registry.py (registry files)."""
