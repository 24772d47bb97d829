"""Benchmarks: each prints one JSON line (see README)."""
