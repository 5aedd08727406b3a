"""Metrics: pure functions of dataset arrays."""
