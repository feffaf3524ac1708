"""Benchmarks of postroom's moving parts: python -m bench.<name>."""
