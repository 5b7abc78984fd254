"""Limits shared by the API's contract and the code that enforces them."""

MAX_K = 100
"""The most similar listings one search returns."""
