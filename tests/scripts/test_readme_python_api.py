"""The README's "Python API" snippet runs as written (tiny SDXL stack, CPU) and does what its comments say."""

import re

import numpy as np
import pytest
from PIL import Image

from tests.scripts.documented_commands import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


def _snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("### Python API", 1)[1]
    blocks = re.findall(r"~~~python\n(.*?)~~~", section, flags=re.S)
    assert blocks, "README 'Python API' has no ~~~python block"
    return blocks[0]


def test_readme_python_api_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (250, 330, 3), dtype=np.uint8)).save("photo.jpg")
    np.save("photo_disp.npy", np.tile(np.linspace(0, 1, 330, dtype=np.float32), (250, 1)))
    namespace: dict = {}
    with pytest.warns(UserWarning, match="no adapter"):
        exec(compile(_snippet(), "README.md (Python API)", "exec"), namespace)
    saved = Image.open(tmp_path / "outputs" / "bokeh.png")
    assert saved.size == (330, 250) and saved.mode == "RGB"
    assert namespace["out"].focus_disparity == [pytest.approx(320 / 329, abs=0.01)]  # the clicked pixel's disparity
    assert (tmp_path / "outputs" / "my_bokehdiff" / "model_index.json").is_file()
    again, image, disparity = namespace["again"], namespace["image"], namespace["disparity"]
    assert again.config.protocol == namespace["pipe"].config.protocol
    rerender = again(image, disparity, K=20, focus_xy=(320, 240), generator=namespace["torch"].Generator().manual_seed(0))
    assert np.array_equal(np.asarray(rerender.images[0]), np.asarray(namespace["out"].images[0]))
