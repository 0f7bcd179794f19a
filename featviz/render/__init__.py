"""Render: pure pictures from arrays (no disk, no model).

``draw`` colour-maps, tiles grids and blends overlays over the original photo; ``device``
blends them on a CUDA device, byte for byte the CPU's; ``figures`` lays out labelled panels
and curve plots; ``text`` pads plain-text tables.
"""
