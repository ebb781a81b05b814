"""MURA data layer: folder walk, official CSVs, manifests, image decoding, synthetic data, splits.

Nothing here imports TensorFlow.
"""
