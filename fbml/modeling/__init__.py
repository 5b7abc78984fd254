"""Models: backbones, factories, datasets, training, devices, metrics and ensembles."""
