"""Benchmarks: runnable modules measuring speed goals against a baseline from the same run."""
