"""Features: what a layer's channels respond to: the learned kernels (``filters``), the images
that excite each channel most over a dataset (``top``), a layer's receptive field
(``receptive``), and the images ``dream`` optimises to excite a channel, a neuron or a class."""
