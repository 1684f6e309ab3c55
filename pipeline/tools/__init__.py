"""Tools around runs: pack shards, evaluate against human labels, best-of-N, filter, report, reparse, size a job (sizing.py)."""
