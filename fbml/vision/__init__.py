"""Photos: clean them, decode them and cache them at a training size."""
