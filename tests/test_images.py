"""Image grids: a long title wraps inside the canvas instead of being cut at its right edge."""
import numpy as np
import torch

from bench import images


def test_long_title_wraps_inside_a_one_column_grid():
    title = "draft-1 on shapes-aesthetic, seed 0: initial 4.242 -> final 6.416 (eval reward, 16 prompts x 2 noises)"
    canvas = images.grid([torch.full((1, 3, 24, 24), 0.5)] * 2, col_labels=["a red circle"],
                         row_labels=["initial", "final"], title=title)
    arr = np.asarray(canvas.convert("L"))
    first_row_top = next(y for y in range(arr.shape[0]) if (arr[y] == 128).any())  # the grey images start here
    band = arr[:first_row_top]
    assert (band < 128).sum() > 0, "the title is drawn"
    assert (band[:, -3:] == 255).all(), "no title text reaches the canvas's right edge"
    short = images.grid([torch.full((1, 3, 24, 24), 0.5)] * 2, title="short")
    assert canvas.height > short.height + 14, "the long title takes several lines"
