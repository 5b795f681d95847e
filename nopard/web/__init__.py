"""The HTTP face of nopard: the Klein app and the Twisted site."""
