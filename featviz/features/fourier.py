"""Images as learnable Fourier coefficients with decorrelated colour, the parameterisation of
feature visualisation (Olah et al., "Feature Visualization", Distill 2017).

Optimising pixels directly gives high-frequency noise the network happens to like; optimising
the coefficients of a 2-D Fourier basis, each scaled by 1/f, gives every frequency the same
step size per unit of its natural image energy, so the images that come out have the spectrum
of photos. Colour is optimised in a decorrelated space: the three coefficients of a position
are mixed by the square root of ImageNet's colour covariance before the sigmoid that keeps
pixels in [0, 1], so one step changes brightness and hue independently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The square root of ImageNet's RGB covariance (its SVD's U·√S), as lucid measured it; each
# column is one decorrelated colour direction.
COLOUR_SQRT_COVARIANCE = (
    (0.26, 0.09, 0.02),
    (0.27, 0.00, -0.05),
    (0.27, -0.09, 0.03),
)
# Dividing the spatial signal by this keeps the sigmoid out of saturation at the start: the
# inverse FFT of 1/f-scaled unit-variance coefficients has a standard deviation of about 4.
SPATIAL_SCALE = 4.0
INITIAL_SD = 0.01  # standard deviation of the initial coefficients: a near-grey start


def spectrum_scale(height: int, width: int, *, decay: float = 1.0) -> torch.Tensor:
    """(height, width // 2 + 1) float32: 1 / f^decay for each coefficient of a real 2-D FFT,
    with f in cycles per pixel and the constant term treated as the lowest frequency there is
    (1 / longest side), so that it is not infinite."""
    import torch

    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    frequency = torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / max(height, width))
    return frequency.pow(-decay)


def colour_matrix() -> torch.Tensor:
    """(3, 3): the decorrelated colour space → RGB, scaled so its largest column has norm 1."""
    import torch

    matrix = torch.tensor(COLOUR_SQRT_COVARIANCE)
    return matrix / matrix.norm(dim=0).max()


class FourierImages:
    """N RGB images of ``size`` × ``size`` pixels held as Fourier coefficients, one per
    generator in ``generators`` (each image's start is drawn from its own, so that it does not
    depend on the other images of the batch).

    ``coefficients`` (N, 3, size, size // 2 + 1, 2) float32 is what an optimiser updates
    (real and imaginary parts); ``pixels()`` gives the (N, 3, size, size) images in [0, 1].
    """

    def __init__(self, size: int, generators: list[torch.Generator], device: torch.device) -> None:
        import torch

        shape = (3, size, size // 2 + 1, 2)
        start = torch.stack([torch.randn(shape, generator=g) * INITIAL_SD for g in generators])
        self.size = size
        self.coefficients = start.to(device).requires_grad_()
        self._scale = spectrum_scale(size, size).to(device)[None, None, :, :, None]
        self._colour = colour_matrix().to(device)

    def pixels(self) -> torch.Tensor:
        """(N, 3, size, size) float32 in [0, 1], differentiable in ``coefficients``."""
        import torch

        spectrum = torch.view_as_complex(self.coefficients * self._scale)
        spatial = torch.fft.irfftn(spectrum, s=(self.size, self.size), norm="ortho")
        spatial = spatial / SPATIAL_SCALE
        # (N, 3, h, w) in the decorrelated space → RGB: mix the channel axis.
        rgb = torch.einsum("rc,nchw->nrhw", self._colour, spatial)
        return torch.sigmoid(rgb)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] → (N, H, W, 3) uint8 on the CPU, as a PNG stores them."""
    import torch

    quantised = (pixels.detach().clamp(0, 1) * 255).round().to("cpu", torch.uint8)
    return quantised.permute(0, 2, 3, 1).contiguous()
