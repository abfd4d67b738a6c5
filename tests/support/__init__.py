"""What the tests and the benchmarks share: a real broker, the daemon as a process, an MJPEG camera
stand-in, synthetic parts and paths. Benchmarks import tests only through this package."""
