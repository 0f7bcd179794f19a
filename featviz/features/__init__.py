"""Features: what a layer's channels respond to — the learned kernels of ``filters``, and the
images ``dream`` optimises to excite a channel, a neuron or a class."""
