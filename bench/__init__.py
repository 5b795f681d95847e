"""Helpers for scripts/bench: running wrk, the npm timings, and the summary it prints."""

import re
import sys

# nopard's access lines: the README's text "[nopard.access#info] <client> <user> <method> <path>
# <status> <bytes> <ms>ms <cache>", or lines of key=value or JSON fields (method, path, cache).
ACCESS_FIELD = re.compile(r'(?:\b|")(method|path|cache)(?:=|":\s*")([^\s",]+)')


def say(message: str) -> None:
    """A progress line on stderr, so stdout carries only the summary."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def access_answer(line: str) -> tuple[str, str, str] | None:
    """(method, path, cache status) of one of nopard's access lines; None for any other line."""
    fields = dict(ACCESS_FIELD.findall(line))
    if {"method", "path", "cache"} <= fields.keys():
        return fields["method"], fields["path"], fields["cache"]
    if "[nopard.access#" in line:
        words = line.split("]", 1)[1].split()
        if len(words) >= 8:
            return words[2], words[3], words[-1]
    return None
