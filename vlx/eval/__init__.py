"""Evaluation: the LLaVA-1.5 paper's benchmarks scored as the reference, and per-field metrics
for schema extraction."""

from vlx.eval.benchmarks import BENCHMARKS, BenchmarkDataError, load_items, run_benchmark
from vlx.eval.fields import field_metrics, format_table

__all__ = ["BENCHMARKS", "BenchmarkDataError", "load_items", "run_benchmark", "field_metrics", "format_table"]
