"""Pure rendering: per-channel scaling, grid geometry, colormaps, overlays."""

from __future__ import annotations

import numpy as np
import pytest

from featviz.errors import UsageError
from featviz.render.draw import (
    SEPARATOR_RGB,
    apply_colormap,
    channel_grid,
    colormap_lut,
    enlarge_factor,
    overlay,
    scale_each,
    tile,
)


def test_each_channel_is_scaled_on_its_own_and_a_flat_one_becomes_zeros() -> None:
    maps = np.stack(
        [
            np.array([[0.0, 1.0], [2.0, 4.0]]),
            np.array([[-10.0, -10.0], [-10.0, -10.0]]),
            np.array([[100.0, 300.0], [200.0, 500.0]]),
        ]
    ).astype(np.float32)
    scaled = scale_each(maps)
    np.testing.assert_allclose(scaled[0], [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(scaled[1], np.zeros((2, 2)))
    np.testing.assert_allclose(scaled[2], [[0.0, 0.5], [0.25, 1.0]])
    assert not np.isnan(scaled).any()


def test_grid_is_near_square_with_separators_and_enlarged_cells() -> None:
    maps = np.random.default_rng(0).random((5, 4, 4)).astype(np.float32)
    grid = channel_grid(maps, lut=colormap_lut("gray"), cell_size=16)
    # 5 channels → 3 per row, 2 rows; cells 4×4 enlarged ×4 = 16 px; 1 px separators.
    assert grid.shape == (2 * 17 + 1, 3 * 17 + 1, 3)
    assert (grid[0] == SEPARATOR_RGB).all() and (grid[:, 17] == SEPARATOR_RGB).all()
    assert (grid[18:34, 35:51] == SEPARATOR_RGB).all()  # the unused sixth cell
    cell = grid[1:17, 1:17, 0]
    assert (cell[:4, :4] == cell[0, 0]).all()  # nearest-neighbour blocks


def test_enlarge_factor_brings_small_maps_up_and_leaves_large_ones() -> None:
    assert enlarge_factor(6, 6, 64) == 11
    assert enlarge_factor(112, 56, 64) == 1


def test_tile_honours_nrow() -> None:
    cells = np.zeros((6, 2, 2, 3), dtype=np.uint8)
    assert tile(cells, nrow=6).shape == (1 * 3 + 1, 6 * 3 + 1, 3)


def test_gray_colormap_is_identity_and_jet_ends_are_blue_and_red() -> None:
    values = np.array([[0.0, 0.5, 1.0]])
    np.testing.assert_array_equal(
        apply_colormap(values, colormap_lut("gray"))[0, :, 0], [0, 128, 255]
    )
    jet = apply_colormap(values, colormap_lut("jet"))[0]
    assert jet[0].argmax() == 2 and jet[2].argmax() == 0


def test_unknown_colormap_suggests_names() -> None:
    with pytest.raises(UsageError, match="unknown colormap 'viridiss'") as info:
        colormap_lut("viridiss")
    assert info.value.hint.startswith("closest: 'viridis'")


def test_overlay_alpha_zero_is_the_image_and_one_the_heatmap() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    heat = rng.random((7, 9)).astype(np.float32)
    lut = colormap_lut("jet")
    np.testing.assert_array_equal(overlay(image, heat, lut=lut, alpha=0.0), image)
    np.testing.assert_array_equal(
        overlay(image, heat, lut=lut, alpha=1.0), apply_colormap(heat, lut)
    )
    half = overlay(image, heat, lut=lut, alpha=0.5).astype(int)
    expected = (image.astype(int) + apply_colormap(heat, lut).astype(int)) / 2
    assert np.abs(half - expected).max() <= 0.5
