"""Security advisories, offline: OSV records imported (osv.py, sources.py), stored (store.py),
and answering npm audit (audit.py);
nopard/jobs/advisories.py refreshes them from NOPARD_ADVISORIES_URL."""
