"""The store's revisions, one module each; Alembic loads them from this folder by path."""
