"""Teacher pseudo-labels (Banitalebi 2021; docs/math.md §8): teachers label an image folder as COCO json."""
