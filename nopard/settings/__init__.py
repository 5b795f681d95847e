"""What an operator sets: the Settings declarations, runtime overrides, access rules."""
