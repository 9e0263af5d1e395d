"""Datasets: COCO-format loading with clear errors, batching, and the demo set."""
