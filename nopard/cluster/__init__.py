"""What instances share: the Redis link, locks, stamps, sessions, and in-process stand-ins."""
