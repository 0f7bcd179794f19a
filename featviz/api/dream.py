"""``featviz.dream``: images optimised to excite channels or classes, as arrays."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featviz.api.model import loaded_model

if TYPE_CHECKING:
    from featviz.features.dream import Dreams


def dream(
    model: Any,
    *,
    layer: str | list[str] | None = None,
    channels: int | str | list[int | str] = (),
    neuron: bool = False,
    targets: int | str | list[int | str] = (),
    steps: int = 256,
    size: int | None = None,
    lr: float = 0.05,
    diversity: int = 1,
    diversity_weight: float = 100.0,
    seed: int = 0,
) -> Dreams:
    """What ``featviz dream`` makes, minus the files: for ``channels`` (indices, or texts as
    ``-c`` takes: ``"0-7"``) of each ``layer`` (names or globs), at the centre only when
    ``neuron``, and for the classes ``targets`` (indices or names), ``diversity`` images each,
    optimised together for ``steps`` Adam steps at ``lr``, ``size`` pixels square (default:
    the model's input size), seeded by ``seed``. ``model``: ``featviz.load``'s, a spec string
    or an ``nn.Module``.

    Returns ``Dreams``: ``pixels`` (N, size, size, 3) uint8 in objective order (each
    objective's copies together), ``objectives``, ``start``/``values`` (the objective before
    and after), ``probabilities`` (a class objective's own class), ``curve`` (each step's
    objective)."""
    from featviz.features.dream import DreamSettings
    from featviz.features.dream import dream as optimise
    from featviz.features.objectives import objectives_for

    loaded = loaded_model(model)
    objectives = objectives_for(
        loaded,
        [layer] if isinstance(layer, str) else list(layer or ()),
        [str(c) for c in (channels if isinstance(channels, (list, tuple)) else [channels])],
        neuron=neuron,
        targets=[str(t) for t in (targets if isinstance(targets, (list, tuple)) else [targets])],
    )
    settings = DreamSettings(
        steps=steps,
        size=size,
        learning_rate=lr,
        diversity=diversity,
        diversity_weight=diversity_weight,
        diversity_layer=loaded.default_cam_layer(),
        seed=seed,
    )
    return optimise(loaded, objectives, settings)
