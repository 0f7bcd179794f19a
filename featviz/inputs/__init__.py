"""Inputs: which images a run reads and how each one becomes the model's input.

``discover`` turns files, folders, globs and stdin into ``ImageSource`` streams (``names``
keeps every image's output folder unique); ``decode`` reads any file safely into RGB;
``preprocess`` resizes without cropping and normalises; ``loaded`` pairs the original pixels
with the model's tensor; ``shards`` splits a run among machines. A new kind of input (video
clips, a dataset) is one module here that yields ``ImageSource`` or ``LoadedImage``.
"""
