"""The twistd dropin that makes `twistd nopard` start the registry."""

from twisted.application.service import ServiceMaker

nopard = ServiceMaker(
    "nopard",
    "nopard.service",
    "An offline-first private npm registry and caching mirror.",
    "nopard",
)
