"""Blur radii the renderers refuse instead of running out of memory or time."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import render_gaussian, render_scatter
from kernels._backend import MAX_RADIUS_DIAGONALS, MIN_RADIUS_LIMIT_PX, check_blur_radius


@pytest.mark.parametrize("render", [render_scatter, render_gaussian])
@pytest.mark.parametrize("radius", [1e4, 1e30])
def test_a_radius_beyond_the_frame_is_refused_with_the_numbers(render, radius):
    image = torch.rand(1, 3, 24, 32)
    coc = torch.full((1, 1, 24, 32), 0.0)
    coc[..., 5, 5] = radius
    with pytest.raises(ValueError, match=r"largest blur radius is .* px, more than the limit of 80 px \(2 x the 24 x 32 image's diagonal"):
        render(image, coc)


@pytest.mark.parametrize("render", [render_scatter, render_gaussian])
@pytest.mark.parametrize("radius", [float("inf"), float("nan")])
def test_a_non_finite_radius_is_refused(render, radius):
    coc = torch.zeros(1, 1, 8, 8)
    coc[..., 2, 2] = radius
    with pytest.raises(ValueError, match="NaN or inf|not finite|largest blur radius"):
        render(torch.rand(1, 3, 8, 8), coc)


def test_the_bound_is_a_multiple_of_the_diagonal():
    diagonal = math.hypot(24, 32)
    check_blur_radius(MAX_RADIUS_DIAGONALS * diagonal, 24, 32, "op")  # at the bound: accepted
    with pytest.raises(ValueError, match="op: "):
        check_blur_radius(MAX_RADIUS_DIAGONALS * diagonal * 1.001, 24, 32, "op")
    check_blur_radius(MIN_RADIUS_LIMIT_PX, 1, 1, "op")  # tiny frames keep ordinary radii
    with pytest.raises(ValueError, match="limit of 64 px"):
        check_blur_radius(MIN_RADIUS_LIMIT_PX + 1, 1, 1, "op")
    out = render_scatter(torch.rand(1, 3, 8, 8), torch.full((1, 1, 8, 8), 3.0))  # ordinary radii still render
    assert out.shape == (1, 3, 8, 8) and torch.isfinite(out).all()


def test_the_cli_reports_an_unbounded_K_and_keeps_going(tmp_path, capsys):
    import inference_hf

    code = inference_hf.main(["--renderer", "classical", "--demo", "--max_side", "64", "--K", "1e30",
                              "--output_dir", str(tmp_path / "out"), "--no_contact_sheet"])
    assert code == 1  # the input failed, with the reason; nothing hangs
    assert "largest blur radius" in capsys.readouterr().err + capsys.readouterr().out
