"""Security advisories, offline: OSV records imported (osv.py, sources.py), stored (store.py),
and answering npm audit (audit.py)."""
