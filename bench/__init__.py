"""Benchmarks (`python -m bench.wire_format`; the full harness is issue 5)."""
