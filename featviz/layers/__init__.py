"""Layers: what a model is made of and how its outputs are tapped.

``trace`` runs the model once on the meta device (shapes, calls, attention inputs, the sizes
it takes, foldable batch norms); ``catalog`` resolves layer names and globs and picks the
default CAM layer; ``layouts`` turns token and channels-last outputs into (N, C, h, w) maps;
``taps`` holds the hooks (a context manager that always removes them); ``relus`` runs ReLU
modules whose backward rule is chosen after the forward (guided backpropagation);
``attention`` captures self-attention matrices from any implementation; ``folding`` merges
batch norms into their convolutions; ``outputs`` reads what a model returns; ``grids`` brings
maps to image size.
"""
