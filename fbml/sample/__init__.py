"""The built-in sample marketplace."""
