"""Distillation plumbing: recipes, level pairing, box mapping, loss terms."""
