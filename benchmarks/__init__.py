"""Benchmarks of the device path: `make bench` (everything, at most 10 minutes) and `make bench-quick`."""
