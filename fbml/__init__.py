"""fbml."""
