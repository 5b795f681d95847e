"""The offline-first mirror of the upstream: documents, tarballs, the freshness policy."""
