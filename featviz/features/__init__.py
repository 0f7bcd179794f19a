"""Features: what a layer's channels respond to (the learned kernels of ``filters``)."""
