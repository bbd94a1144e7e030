"""Measurement scripts (not tests: nothing here asserts a timing, and pytest does not collect
it). Run from the repository root, e.g. ``.venv/bin/python -m bench.turn_latency``."""
