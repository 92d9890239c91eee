"""Tests of the benchmark harness itself (the figures live in make bench, not here)."""
