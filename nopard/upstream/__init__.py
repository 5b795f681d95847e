"""The upstream registry: its HTTP client, circuit breaker, agents and proxy."""
