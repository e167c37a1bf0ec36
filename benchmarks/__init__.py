"""Reproducible benchmarks, each side by side with its baseline in the same run."""
