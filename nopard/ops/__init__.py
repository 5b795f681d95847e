"""Operating nopard: metrics, logs, daemon mode."""
