"""Serving: the HTTP API over a bundle."""
