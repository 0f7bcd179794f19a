"""A decoded input ready for the model: the original pixels and the model's input tensor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from featviz.inputs.discover import ImageSource
    from featviz.inputs.preprocess import Preprocessing


@dataclass
class LoadedImage:
    """A decoded input: the original pixels (H, W, 3) uint8 and the model's (3, h, w) input,
    normalised, or for a GPU uint8 pixels at the size it sees (``LoadedModel.batch``
    normalises them there). A video clip (featviz.inputs.video): its frames (T, H, W, 3) and
    the (3, T, h, w) input, normalised."""

    source: ImageSource
    original: np.ndarray
    tensor: torch.Tensor
    frame_ms: int = 100  # a clip's time from one sampled frame to the next, to play it back


def load_image(
    source: ImageSource, preprocessing: Preprocessing, device: torch.device, max_pixels: int
) -> LoadedImage:
    """``source`` decoded (or taken from memory) and made the model's input: normalised here on
    a CPU; on a GPU kept as bytes, page-locked, for the device to normalise.

    Raises InputError when it cannot be used (the message names it)."""
    import numpy as np
    import torch

    from featviz.errors import InputError
    from featviz.inputs.decode import decode
    from featviz.inputs.memory import picture
    from featviz.inputs.preprocess import normalise, resized, resized_shape
    from featviz.inputs.video import Clip, clip_tensor

    if source.problem is not None:  # an input argument that gave no image
        raise InputError(f"{source.display}: {source.problem}")
    if isinstance(source.image, Clip):
        clip = source.image
        return LoadedImage(source, clip.frames, clip_tensor(clip, preprocessing), clip.frame_ms)
    image = (
        picture(source.image)
        if source.image is not None
        else decode(source.path, max_pixels=max_pixels)
    )
    if resized_shape(image.width, image.height, preprocessing) == (image.height, image.width):
        # At the size the network sees already (resizing would copy it, the same bytes): its
        # pixels converted once for both (a copy, writable to be shared), where each
        # conversion holds the interpreter's lock.
        original = np.array(image)
        pixels = torch.from_numpy(original).permute(2, 0, 1)
    else:
        original = np.asarray(image)
        pixels = resized(image, preprocessing)
    # On a GPU: bytes, page-locked, so that the batch's copy is one DMA of a quarter of the
    # floats' size that need not wait (the GPU normalises them); on a CPU: normalised here, in
    # the decode threads, beside the model's work rather than before it.
    pixels = pixels.pin_memory() if device.type == "cuda" else normalise(pixels, preprocessing)
    return LoadedImage(source, original, pixels)
