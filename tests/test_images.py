"""Image grids."""

import numpy as np

from gen_jax import images


def test_grid_tiles_a_layout_row_by_row_with_padding():
    layout = np.zeros((2, 3, 4, 5, 1))
    layout[1, 2] = 1.0
    tiled = images.grid(layout, padding=1)
    assert tiled.shape == (2 * 5 + 1, 3 * 6 + 1, 1) and tiled.dtype == np.uint8
    assert (tiled[6:10, 13:18] == 255).all() and (tiled[1:5, 1:6] == 0).all()


def test_flat_batch_is_laid_out_near_square_and_saved(tmp_path):
    tiled = images.grid(np.zeros((10, 4, 4, 3)), padding=0)
    assert tiled.shape == (3 * 4, 4 * 4, 3)
    assert images.save_png(tiled, tmp_path / "a/b.png").is_file()
