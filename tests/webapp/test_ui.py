"""webapp.ui.Callbacks without a browser: every page event on a small scene, errors shown in the status line
with the session kept, files written only into the output folder; and the page itself builds."""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from data.focus import focus_from_pixel
from data.io import read_image, save_image
from webapp.core import RenderOptions, render, to_uint8

pytestmark = pytest.mark.xdist_group("gradio")  # imports gradio: one worker (tests/xdist_groups.py)

DISC = ("classical", 12.0, 0, 0.0, 0.0, 0.8)  # renderer, K, blades, rotation, highlight gain, threshold


def no_progress(*args, **kwargs):
    return None


@pytest.fixture
def callbacks(tmp_path, scene, factories, ui):
    return ui.Callbacks(factories, tmp_path / "out", initial_scene=scene, preview_side=32)


def _skipped(value) -> bool:
    """gr.skip(): the output is left as it is."""
    from webapp.ui import Session

    return not isinstance(value, (np.ndarray, str, float, int, Session, type(None)))


def test_start_click_and_rerender(callbacks, scene, factories):
    session, photo, rendered, view, focus, info, status = callbacks.start(*DISC)
    centre = focus_from_pixel(scene.disparity, 30, 20)
    assert session.focus == centre and session.xy == (30, 20) and status == ""
    np.testing.assert_array_equal(photo, to_uint8(scene.image))
    expected = render(scene, RenderOptions(K=12), centre, factories["classical"], 32 / 60)
    np.testing.assert_array_equal(rendered, to_uint8(expected))
    assert view.shape == (40, 60, 3) and focus == round(centre, 4) and "at pixel (30, 20)" in info

    session2, rendered2, _, focus2, info2, status2 = callbacks.click(session, *DISC, evt=SimpleNamespace(index=[47, 5]))
    assert focus2 == round(focus_from_pixel(scene.disparity, 47, 5), 4) == pytest.approx(0.9)
    assert session2.xy == (47, 5) and "at pixel (47, 5)" in info2 and status2 == ""
    assert np.abs(rendered2.astype(int) - rendered.astype(int)).mean() > 1  # the render follows the focus

    hexagon = ("classical", 12.0, 6, 30.0, 0.0, 0.8)
    session3, rendered3, *_ = callbacks.rerender(session2, *hexagon)
    assert session3.focus == session2.focus
    assert not np.array_equal(rendered3, rendered2)  # the aperture shape changed the blur


def test_errors_show_in_the_status_and_keep_the_session(callbacks, scene):
    session, *_ = callbacks.start(*DISC)
    outside = callbacks.click(session, *DISC, evt=SimpleNamespace(index=[600, 5]))
    assert outside[0] is session and all(_skipped(v) for v in outside[1:5])
    assert outside[5].startswith("**Error:**") and "outside the image" in outside[5]
    bad_K = callbacks.rerender(session, "classical", 99.0, 0, 0.0, 0.0, 0.8)
    assert bad_K[0] is session and "K must be in [0, 40]" in bad_K[-1]
    missing = callbacks.rerender(session, "bokehdiff", *DISC[1:])
    assert "'bokehdiff' is not loaded" in missing[-1]
    # After the errors the next request works.
    again = callbacks.click(session, *DISC, evt=SimpleNamespace(index=[20, 20]))
    assert again[3] == pytest.approx(0.5) and again[5] == ""


def test_uploads(tmp_path, callbacks, scene):
    session, *_ = callbacks.start(*DISC)
    photo, disparity, corrupt = tmp_path / "mine.png", tmp_path / "mine.npy", tmp_path / "corrupt.png"
    save_image(photo, scene.image[:, ::-1].copy())
    np.save(disparity, scene.disparity[0, ::-1])
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    bad = callbacks.load_upload(session, str(corrupt), str(disparity), False, "auto", *DISC)
    assert bad[0] is session and all(_skipped(v) for v in bad[1:6])
    assert "photo 'corrupt.png': cannot decode" in bad[6]
    no_map = callbacks.load_upload(session, str(photo), None, False, "auto", *DISC)
    assert "--depth_model" in no_map[6]
    new, shown, *_, status = callbacks.load_upload(session, str(photo), str(disparity), False, "auto", *DISC)
    assert new.scene.name == "mine" and "loaded mine (60x40)" in status
    np.testing.assert_array_equal(shown, to_uint8(read_image(photo)))
    assert new.focus == focus_from_pixel(scene.disparity[:, ::-1], 30, 20)
    back, *_ = callbacks.load_demo(new, *DISC)
    assert back.scene is scene


def test_full_resolution_and_focus_pull_write_only_into_the_output_folder(tmp_path, callbacks, scene, factories):
    session, *_ = callbacks.start(*DISC)
    path, status = callbacks.full_resolution(session, *DISC, progress=no_progress)
    expected = render(scene, RenderOptions(K=12), session.focus, factories["classical"], 1.0)
    assert path.endswith(".png") and "full resolution written" in status
    np.testing.assert_allclose(read_image(path), expected, atol=0.5 / 255 + 1e-6)
    callbacks.focus_pull_frames = 3
    gif, status = callbacks.focus_pull(session, *DISC, progress=no_progress)
    with Image.open(gif) as animation:
        assert animation.n_frames == 4 and max(animation.size) <= 32
    assert "3 frames" in status
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert all(name.startswith("out/") for name in written) and len(written) == 2
    failed = callbacks.full_resolution(session, "classical", -3.0, 0, 0.0, 0.0, 0.8, progress=no_progress)
    assert _skipped(failed[0]) and "K must be in" in failed[1]


def test_callbacks_need_the_classical_renderer(tmp_path, scene, factories, ui):
    with pytest.raises(ValueError, match="classical"):
        ui.Callbacks({}, tmp_path, initial_scene=scene)
    with pytest.raises(ValueError, match="preview_side"):
        ui.Callbacks(factories, tmp_path, initial_scene=scene, preview_side=4)


def test_page_builds_with_every_event(callbacks, ui):
    page = ui.build_app(callbacks)
    ids = {block.elem_id for block in page.blocks.values() if getattr(block, "elem_id", None)}
    assert {"photo", "render", "disparity", "focus_value", "status", "K", "blades", "rotation", "highlight_gain",
            "full_button", "pull_button", "upload_photo", "upload_disparity"} <= ids
    names = {dependency.fn.__name__ for dependency in page.fns.values()}
    assert {"start", "click", "rerender", "load_upload", "load_demo", "full_resolution", "focus_pull"} <= names
