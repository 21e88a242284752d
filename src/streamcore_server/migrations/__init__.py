"""Alembic migrations, shipped inside the package and run by the app at start-up."""
