"""Benchmarks of the service: each module prints its figures (``python -m benchmarks.NAME``).

Results and the commands that produced them are in docs/BENCHMARKS.md. These are measurements, not
timed tests: nothing here asserts a target.
"""
