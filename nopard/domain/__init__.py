"""Pure values and functions: names, documents, publication, integrity, lockfiles, errors."""
