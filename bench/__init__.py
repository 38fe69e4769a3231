"""`make bench`: load and evaluation benchmarks (not tests: `make test` never runs them)."""
