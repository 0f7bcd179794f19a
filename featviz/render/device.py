"""Overlays rendered on the model's GPU: upsampling, colour-mapping and blending run where the
maps already are, and only the finished uint8 pixels come back to the CPU, whose threads are
left with PNG/JPEG encoding (at thousands of images a second a GPU would otherwise wait for
them: one 640×480 overlay costs a CPU thread a few milliseconds).

The blend looks up the same table as render.overlay (render.blend_table), so an overlay's bytes
are those of the CPU path for the same heatmap (tested on the CPU; on a GPU the bilinear
upsampling itself may differ in the last bit of a float).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featviz.render.draw import OVERLAY_BAND_ROWS, blend_table

if TYPE_CHECKING:
    import numpy as np
    import torch


def renders_on(device: torch.device) -> bool:
    """Whether overlays of a model on ``device`` are rendered there: on CUDA. On a CPU numpy's
    lookups in the writer threads are faster than torch's on one thread each."""
    return device.type == "cuda"


class DeviceBlend:
    """render.overlay on torch tensors of ``device``, for one colour map and opacity."""

    def __init__(self, lut: np.ndarray, alpha: float, device: torch.device) -> None:
        import torch

        self.lut = torch.from_numpy(lut).to(device)
        self.table = torch.from_numpy(blend_table(alpha).copy()).to(device)
        self.device = device

    def overlay(self, image: torch.Tensor, heatmap: torch.Tensor) -> torch.Tensor:
        """(H, W, 3) uint8 and (H, W) floats in [0, 1], both on the device → (H, W, 3) uint8;
        a clip's (T, H, W, 3) frames and (T, H, W) heatmaps alike."""
        out = image.new_empty(image.shape)
        # In bands of rows, as on the CPU: the temporaries then cost a band, not a photo.
        for top in range(0, image.shape[0], OVERLAY_BAND_ROWS):
            rows = slice(top, top + OVERLAY_BAND_ROWS)
            colour = self.lut[heatmap[rows].mul(255.0).round_().clamp_(0, 255).long()]
            out[rows] = self.table[(image[rows].long() << 8) | colour]
        return out
