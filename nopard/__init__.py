"""nopard: an offline-first private npm registry and caching mirror on Twisted."""

__version__ = "0.1.0"
