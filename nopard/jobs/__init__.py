"""Scheduled sync jobs (refresh, backfill, prefetch) and their schedule."""
