"""dwops's benchmarks: `scripts/bench` (or `python -m benchmarks`) runs them all on the lab and
prints figures and ratios measured in the same run."""
