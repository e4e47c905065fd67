"""Benchmarks: ``python -m benchmarks.<name> [--quick]``; each prints one JSON line last."""
