"""Support for tests and benchmarks: locating the reference tools they compare edgekit against."""
