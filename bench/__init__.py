"""Helpers for scripts/bench: running wrk, the npm timings, and the summary it prints."""

import sys


def say(message: str) -> None:
    """A progress line on stderr, so stdout carries only the summary."""
    print(f"bench: {message}", file=sys.stderr, flush=True)
