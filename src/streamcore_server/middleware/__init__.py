"""Pure ASGI middleware, one per file."""
