"""Restore, verify, prune, garbage collection and reports."""
