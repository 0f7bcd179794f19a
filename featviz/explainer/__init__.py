"""Explainer: every method's map for every layer and target of a batch, from one forward.

``batch`` (the Explainer) is what cam, compare, score, sanity and the library share;
``maps`` what it gives: each image's maps, named and captioned; ``options`` what to explain;
``targets`` resolves class names; ``predictions`` and ``names`` say what a map is of and how
its files are named;
``checks`` fails an image, not the run, when its scores or maps are not finite.
"""
