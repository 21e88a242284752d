"""Readable pure-Python specifications of the compiled core, for tests and benchmarks only."""
