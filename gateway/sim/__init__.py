"""The simulated site: devices for the demo, the tests and the benchmarks."""
