"""Shared platform plumbing: configuration, the Spark session, Delta tables, table contracts."""
