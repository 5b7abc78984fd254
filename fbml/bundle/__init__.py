"""Bundles: the stored models, predictors and similar-listings index."""
