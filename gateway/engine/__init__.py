"""The local credential engine: engine.py (the `Backend`), rules.py (the service's rules, pure),
otp.py (generation and hashing), tables.py (its tables and SQL) and registry.py (registry files)."""
