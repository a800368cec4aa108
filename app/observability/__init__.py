"""Metrics (lock-free collectors, the exposition) and logs."""
