"""The thin Starlette app around streamcore."""
