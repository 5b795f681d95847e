"""The search index over local and cached packages."""
