"""Benchmarks: AR baseline vs the recipe's speculative method in one process."""

from .runner import BenchResult, run_bench

__all__ = ["run_bench", "BenchResult"]
