"""`make bench`: load and evaluation benchmarks (not tests: `make test` never runs them)."""

from pathlib import Path
from typing import Final

# Where every benchmark writes its figures (bench/results/*.md, *.json).
RESULTS: Final = Path(__file__).resolve().parent / "results"
