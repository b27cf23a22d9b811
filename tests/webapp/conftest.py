"""Small scenes, the app's classical renderer and its page module for the webapp tests.

The tests that import gradio (through ``webapp.ui``) are the ``gradio`` xdist group: they run on one worker, and
they import it in fixtures and tests, not at module level, so that collecting them costs the other worker nothing
(tests/xdist_groups.py)."""

import numpy as np
import pytest
import torch

import app
from webapp.core import Scene


def layered_scene(height: int = 40, width: int = 60) -> Scene:
    """A textured photo with three depth layers: far wall (0.1), a middle box (0.5), a near bar (0.9)."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0.1, 0.9, size=(3, height, width)).astype(np.float32)
    disparity = np.full((1, height, width), 0.1, np.float32)
    disparity[:, height // 4 : 3 * height // 4, width // 5 : width // 2] = 0.5
    disparity[:, :, 3 * width // 4 : 3 * width // 4 + 6] = 0.9
    return Scene("layers", image, disparity)


@pytest.fixture
def scene() -> Scene:
    return layered_scene()


@pytest.fixture(scope="session")
def ui():
    """``webapp.ui`` (the page and its callbacks), imported on first use: importing gradio takes about 6 s."""
    import webapp.ui

    return webapp.ui


@pytest.fixture(scope="session")
def factories():
    """``app.py``'s renderer factories for the default (demo) flags: classical only."""
    _, render_args, names = app.parse_args([])
    return app.renderer_factories(render_args, names, torch.device("cpu"))
