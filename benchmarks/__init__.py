"""Benchmarks: `make bench` runs each module's main()."""
