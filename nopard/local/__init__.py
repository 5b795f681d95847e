"""Packages published to this registry."""
