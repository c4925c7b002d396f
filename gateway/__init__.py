"""A GraphQL gateway for Clinical One device credentials."""

__version__ = "0.1.0"
