"""Test helpers for vinework (simulated clusters and other harnesses used by the test suite)."""
