"""Observability: metrics, logging, health and the access log."""
