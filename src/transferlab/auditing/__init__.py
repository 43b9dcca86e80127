"""Auditing a dataset before training: duplicates (and leakage across splits), label issues, outliers, and the report."""
