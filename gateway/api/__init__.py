"""The GraphQL face: types.py (input, results, errors, the union), context.py, schema.py."""
