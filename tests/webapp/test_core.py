"""webapp.core: options, scenes from the demo and from uploads, focus, preview vs full renders, the disparity
view, saved renders and focus pulls."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import kernels
from data.focus import focus_from_pixel
from data.io import InputWarning, read_disparity, read_image, save_image
from tests.models.test_depth import build_tiny_depth_anything
from models.depth import DepthEstimator
from webapp.core import (
    FOCUS_COLOUR, MARKER_COLOUR, PREVIEW_BUDGET, PREVIEW_MIN_SIDE, RenderOptions, Scene, UploadError, demo_scene,
    disparity_view, focus_at, focus_sweep,
    in_focus_mask, initial_focus, render, save_render, shrink, to_uint8, upload_scene, write_animation,
)


# ----------------------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------------------
def test_options_validation_names_the_control():
    assert RenderOptions(blades=2).validated(["classical"]).blades == 0  # no 2-blade polygon: the disc
    assert RenderOptions(blades=6).validated(["classical"]).blades == 6
    with pytest.raises(ValueError, match="K must be in"):
        RenderOptions(K=-1).validated(["classical"])
    with pytest.raises(ValueError, match="blades must be"):
        RenderOptions(blades=13).validated(["classical"])
    with pytest.raises(ValueError, match="highlight gain"):
        RenderOptions(highlight_gain=11).validated(["classical"])
    with pytest.raises(ValueError, match="'bokehdiff' is not loaded.*--pretrained_model_name_or_path"):
        RenderOptions(renderer="bokehdiff").validated(["classical"])


def test_file_stem_extends_inference_naming_and_separates_settings():
    disc, hexagon = RenderOptions(K=20), RenderOptions(K=20, blades=6, rotation_deg=15)
    assert disc.file_stem("moto", 0.5) == "moto_K20_f0.50_classical"
    assert hexagon.file_stem("moto", 0.5).startswith("moto_K20_f0.50_classical_6blades")
    assert RenderOptions(K=20, highlight_gain=2).file_stem("moto", 0.5) != disc.file_stem("moto", 0.5)


# ----------------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------------
def test_demo_scene_is_the_motorcycle():
    scene = demo_scene()
    assert scene.name == "motorcycle" and scene.size == (500, 741)
    assert scene.image.shape == (3, 500, 741) and scene.disparity.shape == (1, 500, 741)
    assert 0 <= scene.disparity.min() < 0.05 and 0.95 < scene.disparity.max() <= 1
    assert scene.notes == []  # the expected hole filling is quiet, as in inference_hf.py --demo
    assert scene.preview_scale(384) == pytest.approx(384 / 741) and scene.preview_scale(1000) == 1.0


def test_preview_scale_caps_the_scatter_cost():
    scene = demo_scene()
    height, width = scene.size
    assert scene.max_coc(0.0) == pytest.approx(float(scene.disparity.max()))
    mild = scene.preview_scale(384, 10.0, 0.5)
    assert mild == pytest.approx(384 / 741)  # within the budget: only the side limit
    strong = scene.preview_scale(384, 40.0, 0.0)
    radius = 40.0 * scene.max_coc(0.0)
    assert strong < mild
    assert (strong**2 * height * width) * (strong * radius) ** 2 == pytest.approx(PREVIEW_BUDGET, rel=1e-6)
    assert scene.preview_scale(384, 40.0, 0.0, budget=1.0) == pytest.approx(PREVIEW_MIN_SIDE / 741)
    assert scene.preview_scale(100, 40.0, 0.0, budget=1.0) == pytest.approx(100 / 741)  # max_side wins


@pytest.fixture
def files(tmp_path, scene):
    photo, disp_npy, disp_png = tmp_path / "shot.png", tmp_path / "shot.npy", tmp_path / "shot_disp.png"
    save_image(photo, scene.image)
    np.save(disp_npy, scene.disparity[0])
    save_image(disp_png, scene.disparity[0], bits=16)
    return photo, disp_npy, disp_png


def test_upload_reads_as_inference_hf_does(files, scene):
    photo, disp_npy, disp_png = files
    loaded = upload_scene(photo, disp_npy)
    assert loaded.name == "shot" and loaded.notes == []
    np.testing.assert_array_equal(loaded.image, read_image(photo))
    np.testing.assert_array_equal(loaded.disparity, scene.disparity)
    from_png = upload_scene(photo, disp_png)
    np.testing.assert_allclose(from_png.disparity, scene.disparity, atol=1 / 65535)


def test_upload_depth_and_normalisation_choices(tmp_path, files):
    photo = files[0]
    depth = np.linspace(1.0, 5.0, 40 * 60, dtype=np.float32).reshape(40, 60)
    np.save(tmp_path / "depth.npy", depth)
    loaded = upload_scene(photo, tmp_path / "depth.npy", is_depth=True)
    with pytest.warns(InputWarning, match="min-max normalised"):
        reference = read_disparity(tmp_path / "depth.npy", is_depth=True)
    np.testing.assert_allclose(loaded.disparity, reference)
    assert loaded.disparity[0, 0, 0] == pytest.approx(1.0) and loaded.disparity[0, -1, -1] == pytest.approx(0.0)
    assert any("min-max normalised" in note for note in loaded.notes)
    relative = np.full((40, 60), 0.2, np.float32)
    relative[:, 30:] = 0.6
    np.save(tmp_path / "rel.npy", relative)
    assert upload_scene(photo, tmp_path / "rel.npy", normalise="never").disparity.max() == pytest.approx(0.6)
    assert upload_scene(photo, tmp_path / "rel.npy", normalise="always").disparity.max() == pytest.approx(1.0)


def test_upload_resizes_same_aspect_and_rejects_other_photos_maps(tmp_path, files, scene):
    photo = files[0]
    np.save(tmp_path / "half.npy", cv2.resize(scene.disparity[0], (30, 20), interpolation=cv2.INTER_AREA))
    half = upload_scene(photo, tmp_path / "half.npy")
    assert half.disparity.shape == (1, 40, 60) and any("resized" in note for note in half.notes)
    np.save(tmp_path / "square.npy", np.zeros((40, 40), np.float32))
    with pytest.raises(UploadError, match=r"'square.npy' is 40x40 but the photo 'shot.png' is 60x40"):
        upload_scene(photo, tmp_path / "square.npy")


def test_bad_uploads_say_which_file_and_why(tmp_path, files):
    photo, disp_npy, _ = files
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"not a jpeg at all")
    with pytest.raises(UploadError, match="photo 'broken.jpg': cannot decode"):
        upload_scene(corrupt, disp_npy)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UploadError, match="photo 'notes.txt': '.txt' is not a file type"):
        upload_scene(tmp_path / "notes.txt", disp_npy)
    with pytest.raises(UploadError, match="disparity map 'notes.txt'"):
        upload_scene(photo, tmp_path / "notes.txt")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(UploadError, match="disparity map 'bad.npy': cannot read"):
        upload_scene(photo, tmp_path / "bad.npy")
    with pytest.raises(UploadError, match="--depth_model"):
        upload_scene(photo, None)
    with pytest.raises(UploadError, match="no photo"):
        upload_scene(None, disp_npy)


def test_upload_without_map_uses_the_depth_model(files):
    estimator = DepthEstimator(build_tiny_depth_anything(), input_size=28)
    loaded = upload_scene(files[0], None, depth_estimator=estimator)
    expected = estimator(torch.from_numpy(read_image(files[0]))[None])[0].numpy()
    assert loaded.disparity.shape == (1, 40, 60)
    np.testing.assert_allclose(loaded.disparity, expected, atol=1e-6)
    assert loaded.disparity.max() - loaded.disparity.min() > 0.5  # a real, varying estimate


# ----------------------------------------------------------------------------------------------------------
# Focus
# ----------------------------------------------------------------------------------------------------------
def test_focus_is_focus_xy(scene):
    for x, y in ((0, 0), (20, 20), (47, 5), (59, 39)):
        assert focus_at(scene, x, y) == focus_from_pixel(scene.disparity, x, y)
    assert focus_at(scene, 20, 20) == pytest.approx(0.5) and focus_at(scene, 47, 5) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="outside the image"):
        focus_at(scene, 60, 0)


def test_initial_focus_follows_choose_focus(scene):
    assert initial_focus(scene) == (focus_from_pixel(scene.disparity, 30, 20), (30, 20))
    assert initial_focus(scene, focus_xy=(47, 5)) == (pytest.approx(0.9), (47, 5))
    value, xy = initial_focus(scene, focus_percentile=[50.0])
    assert value == pytest.approx(float(np.percentile(scene.disparity, 50))) and xy is None


def test_focus_sweep_runs_near_to_far(scene):
    sweep = focus_sweep(scene, 5)
    assert len(sweep) == 5 and all(a > b for a, b in zip(sweep, sweep[1:]))
    assert sweep[0] == pytest.approx(np.percentile(scene.disparity, 95))
    assert sweep[-1] == pytest.approx(np.percentile(scene.disparity, 5))
    with pytest.raises(ValueError, match="at least 2"):
        focus_sweep(scene, 1)


# ----------------------------------------------------------------------------------------------------------
# Renders
# ----------------------------------------------------------------------------------------------------------
def test_full_render_is_the_classical_renderer(scene, factories):
    options = RenderOptions(K=8, blades=5, rotation_deg=10)
    got = render(scene, options, 0.5, factories["classical"], 1.0)
    expected = kernels.render_classical(torch.from_numpy(scene.image)[None], torch.from_numpy(scene.disparity)[None],
                                        8.0, 0.5, blades=5, rotation_deg=10.0)[0].numpy()
    np.testing.assert_array_equal(got, expected)


def test_preview_approximates_the_full_render(scene, factories):
    big = Scene("big", cv2.resize(scene.image.transpose(1, 2, 0), (120, 80)).transpose(2, 0, 1).copy(),
                cv2.resize(scene.disparity[0], (120, 80), interpolation=cv2.INTER_NEAREST)[None].copy())
    options, classical = RenderOptions(K=12), factories["classical"]
    full = render(big, options, 0.5, classical, 1.0)
    preview = render(big, options, 0.5, classical, 0.5)
    other_focus = render(big, options, 0.9, classical, 1.0)
    assert preview.shape == full.shape == (3, 80, 120)
    error = np.abs(preview - full).mean()
    assert error < 0.5 * np.abs(other_focus - full).mean()  # closer to the full render than a refocus is
    with pytest.raises(ValueError, match="scale"):
        render(big, options, 0.5, classical, 1.5)


def test_disparity_view_marks_the_focal_plane_and_the_click(scene):
    view = disparity_view(scene, 0.5, 10.0, (10, 30))
    sharp = in_focus_mask(scene.disparity, 0.5, 10.0)
    assert view.shape == (40, 60, 3) and view.dtype == np.uint8
    assert sharp[20, 20] and not sharp[0, 0] and not sharp[0, 47]
    assert view[20, 20, 1] > view[20, 20, 0] + 50  # tinted green
    grey = to_uint8(scene.disparity)
    np.testing.assert_array_equal(view[0, 0], grey[0, 0])  # out of focus: the grey map
    assert tuple(view[30, 10]) == MARKER_COLOUR
    assert in_focus_mask(scene.disparity, 0.5, 0.0).all()  # K = 0: everything is sharp
    assert FOCUS_COLOUR[1] > FOCUS_COLOUR[0]
    small = disparity_view(scene, 0.5, 10.0, (10, 30), max_side=30)  # display size: half, the cross follows
    assert small.shape == (20, 30, 3) and tuple(small[15, 5]) == MARKER_COLOUR
    assert small[10, 10, 1] > small[10, 10, 0] + 50 and small[0, 0, 1] == small[0, 0, 0]


def test_shrink_to_display_size():
    image = np.zeros((400, 1000, 3), np.uint8)
    image[:, 500:] = 200
    small = shrink(image, 250)
    assert small.shape == (100, 250, 3) and small[:, :124].max() == 0 and small[:, 126:].min() == 200
    assert shrink(image, 1000) is image and shrink(image, None) is image


def test_saved_render_and_focus_pull(tmp_path, scene):
    image = scene.image
    path = save_render(image, tmp_path / "renders", scene, RenderOptions(K=20), 0.5)
    assert path.name == "layers_K20_f0.50_classical.png"
    np.testing.assert_allclose(read_image(path), image, atol=0.5 / 255 + 1e-6)
    frames = [np.full((3, 40, 60), v, np.float32) for v in (0.0, 0.5, 1.0)]
    gif = write_animation(frames, tmp_path / "pull" / "p.gif", max_side=30)
    with Image.open(gif) as animation:
        assert animation.n_frames == 4 and animation.size == (30, 20)  # forward and back: 0, .5, 1, .5
        assert animation.info.get("loop") == 0
    assert sorted(p.name for p in (tmp_path / "pull").iterdir()) == ["p.gif"]  # no temporary file left
    with pytest.raises(ValueError, match="at least 2"):
        write_animation(frames[:1], tmp_path / "x.gif")
