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
    """A decoded input: the original pixels (H, W, 3) uint8 and the model's (3, h, w) input
    as uint8 pixels at the size it sees (``LoadedModel.batch`` normalises a batch of them at
    once). A video clip (featviz.inputs.video): its frames (T, H, W, 3) and the (3, T, h, w)
    input, normalised."""

    source: ImageSource
    original: np.ndarray
    tensor: torch.Tensor
    frame_ms: int = 100  # a clip's time from one sampled frame to the next, to play it back


def load_image(
    source: ImageSource, preprocessing: Preprocessing, device: torch.device, max_pixels: int
) -> LoadedImage:
    """``source`` decoded (or taken from memory) and made the model's input: uint8 (3, h, w)
    pixels at the network's size, normalised with the rest of their batch (a video clip's
    frames: normalised floats already).

    Raises InputError when it cannot be used (the message names it)."""
    import numpy as np
    import torch

    from featviz.errors import InputError
    from featviz.inputs.decode import decode
    from featviz.inputs.memory import picture
    from featviz.inputs.preprocess import resized, resized_shape
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
    # Bytes, a quarter of the floats' size: a batch is normalised in one go as it is put
    # together (LoadedModel.batch), four tensor operations where each image's own would take
    # four more, each holding the interpreter's lock. On a GPU they are page-locked, so that
    # the batch's copy is one DMA that need not wait, and the device normalises them.
    if device.type == "cuda":
        pixels = pixels.pin_memory()
    return LoadedImage(source, original, pixels)
