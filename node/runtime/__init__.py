"""Workloads and the host's resources."""
