"""Benchmarks: run by hand (``python3 -m tests.benchmarks.<name>``), not collected by pytest."""
