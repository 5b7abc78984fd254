"""Limits shared by the API's contract and the code that enforces them."""

MAX_K = 100
"""The most similar listings one search returns."""
MAX_LISTING_PHOTOS = 100
"""The most photo ids one catalogue listing keeps (a bundle holding more is refused)."""
MAX_CATALOGUE_TEXT = 1_000
"""The most characters of one catalogue text (an id, a name, a category path, a photo id) a loaded bundle may hold."""
