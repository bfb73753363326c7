"""Seeing a run from outside: status queries and the status command, the live
dashboard, Prometheus metrics, TaskVine-format logs and plots, progress display."""
