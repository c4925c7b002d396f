"""The servers the gateway is measured beside: plain Starlette routes (`plain.py`) and an Apollo peer (`apollo/`)."""
