"""Teacher pseudo-labels (Banitalebi 2021; SPEC §8): teachers label an image folder as COCO json."""
