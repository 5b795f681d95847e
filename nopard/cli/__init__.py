"""nopard-admin and its maintenance and transfer commands."""
