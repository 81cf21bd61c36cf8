"""HTTP: /health /ready /status /metrics and the REST API."""
