"""Workflows: train, evaluate, index, baselines and the quickstart, composed from the layers below."""
