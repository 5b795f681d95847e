"""Helpers for scripts/bench: running wrk, the npm timings, and the summary it prints."""
