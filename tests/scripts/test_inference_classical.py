"""inference_hf.py with the classical renderer, end to end and in-process: demo, user inputs, bad inputs."""

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

import inference_hf
from data.inference_io import PendingInput
from data.io import InputWarning, read_image, save_image
from inference import renderers

H, W = 40, 56


def _scene(tmp_path, *, disparity=None, image=None, name="scene"):
    """A textured image with a near rectangle (disparity 0.9) on a far background (0.2)."""
    rng = np.random.default_rng(0)
    if image is None:
        image = rng.random((3, H, W)).astype(np.float32)
    if disparity is None:
        disparity = np.full((H, W), 0.2, np.float32)
        disparity[10:30, 15:40] = 0.9
    image_path = tmp_path / f"{name}.png"
    if image.ndim == 3 and image.shape[0] == 3:
        save_image(image_path, image)
    else:  # already an OpenCV array (gray / BGRA / 16-bit)
        cv2.imwrite(str(image_path), image)
    disparity_path = tmp_path / f"{name}_disp.npy"
    np.save(disparity_path, disparity)
    return image_path, disparity_path


def _run(tmp_path, image_path, disparity_path, *extra, out="out"):
    argv = ["--renderer", "classical", "--image", str(image_path), "--disparity", str(disparity_path),
            "--output_dir", str(tmp_path / out), "--device", "cpu", *extra]
    return inference_hf.main(argv), tmp_path / out


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        inference_hf.parse_args(["--help"])
    assert exit_info.value.code == 0 and "--focus_xy" in capsys.readouterr().out


def test_demo_fast_mode_writes_named_renders_and_sheet(tmp_path):
    """The demo at 128 px with small K (the renderer's cost grows with K^2); the full demo is `make demo`."""
    out = tmp_path / "demo"
    assert inference_hf.main(["--renderer", "classical", "--demo", "--max_side", "128", "--K", "3", "6",
                              "--output_dir", str(out), "--device", "cpu"]) == 0
    renders = sorted(p.name for p in out.glob("motorcycle_K*_f*.png"))
    # The documented demo focus planes: percentiles 90/50/10 of the full-resolution disparity.
    assert renders == sorted(f"motorcycle_K{k}_f{f}.png" for k in (3, 6) for f in ("0.88", "0.56", "0.09"))
    assert read_image(out / renders[0]).shape == (3, 86, 128)
    sheet = read_image(out / "contact_sheet.png")
    tile_height = round(320 * 86 / 128)  # tiles are 320 px wide, aspect kept
    assert sheet.shape == (3, 2 * (tile_height + 22), 4 * 320)  # 2 rows (K) x (input/disparity + 3 focus planes)
    config = json.loads((out / "run_config.json").read_text())
    assert config["K"] == [3.0, 6.0] and config["focus_percentile"] == [90.0, 50.0, 10.0]


def test_demo_defaults():
    args = inference_hf.parse_args(["--demo"])
    assert args.K == [10.0, 20.0] and args.focus_percentile == [90.0, 50.0, 10.0] and args.renderer == "classical"
    args = inference_hf.parse_args(["--demo", "--K", "5", "--focus_disparity", "0.3"])
    assert args.K == [5.0] and args.focus_percentile is None and args.focus_disparity == [0.3]


def test_user_pair_focus_plane_is_sharp_and_blur_grows_with_K(tmp_path):
    image_path, disparity_path = _scene(tmp_path)
    code, out = _run(tmp_path, image_path, disparity_path, "--focus_disparity", "0.9", "--K", "0", "8")
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["contact_sheet.png", "run_config.json", "scene_K0_f0.90.png", "scene_K8_f0.90.png"]
    source = read_image(image_path)
    identity = read_image(out / "scene_K0_f0.90.png")
    assert np.abs(identity - source).max() <= 1.5 / 255  # K = 0 renders the input (channel order kept)
    blurred = read_image(out / "scene_K8_f0.90.png")
    inside = (slice(None), slice(14, 26), slice(19, 36))  # well inside the in-focus near rectangle
    assert np.abs(blurred[inside] - source[inside]).max() <= 1.5 / 255
    background = (slice(None), slice(0, 6), slice(0, 10))  # far plane, coc = 8 * 0.7 = 5.6 px: smoothed
    assert blurred[background].std() < 0.5 * source[background].std()


def test_two_runs_are_bit_identical(tmp_path):
    image_path, disparity_path = _scene(tmp_path)
    args = ("--focus_xy", "5", "5", "--K", "6", "--blades", "6")
    assert _run(tmp_path, image_path, disparity_path, *args, out="a")[0] == 0
    assert _run(tmp_path, image_path, disparity_path, *args, out="b")[0] == 0
    files = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert files == ["contact_sheet.png", "scene_K6_f0.20.png"]  # focus_xy (5, 5) is on the far plane
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_auto_focus_uses_the_mask_else_the_centre(tmp_path):
    image_path, disparity_path = _scene(tmp_path)
    code, out = _run(tmp_path, image_path, disparity_path, "--K", "4", out="centre")
    assert code == 0 and (out / "scene_K4_f0.90.png").is_file()  # the centre lies on the near rectangle
    mask = np.zeros((H, W), np.uint8)
    mask[:8, :] = 255  # a subject on the far plane
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    code, out = _run(tmp_path, image_path, disparity_path, "--K", "4", "--mask", str(tmp_path / "mask.png"), out="m")
    assert code == 0 and (out / "scene_K4_f0.20.png").is_file()


def test_depth_input_is_converted(tmp_path):
    depth = np.full((H, W), 10.0, np.float32)
    depth[10:30, 15:40] = 2.0  # near rectangle = small depth = disparity 1 after conversion
    image_path, disparity_path = _scene(tmp_path, disparity=depth)
    with pytest.warns(InputWarning, match="normalised"):
        code, out = _run(tmp_path, image_path, disparity_path, "--depth", "--focus_xy", "20", "20", "--K", "3")
    assert code == 0 and (out / "scene_K3_f1.00.png").is_file()


# ------------------------------------------------------------------------------------------- bad inputs
def test_disparity_of_another_size_is_resized_with_a_warning(tmp_path):
    small = np.full((H // 2, W // 2), 0.5, np.float32)
    image_path, disparity_path = _scene(tmp_path, disparity=small)
    with pytest.warns(InputWarning, match="resized"):
        code, out = _run(tmp_path, image_path, disparity_path, "--K", "5")
    assert code == 0 and read_image(out / "scene_K5_f0.50.png").shape == (3, H, W)


def test_nan_inf_and_out_of_range_disparity_are_repaired_with_warnings(tmp_path):
    raw = np.linspace(3.0, 60.0, H * W, dtype=np.float32).reshape(H, W)  # pixel disparities, not [0, 1]
    raw[0, :5], raw[5, 5] = np.nan, np.inf
    image_path, disparity_path = _scene(tmp_path, disparity=raw)
    with pytest.warns(InputWarning) as record:
        code, out = _run(tmp_path, image_path, disparity_path, "--K", "5", "--focus_disparity", "0.5")
    messages = " ".join(str(w.message) for w in record)
    assert "6 invalid pixels" in messages and "min-max normalised" in messages
    assert code == 0 and np.isfinite(read_image(out / "scene_K5_f0.50.png")).all()


@pytest.mark.parametrize("kind", ["gray", "rgba", "16bit"])
def test_gray_rgba_and_16bit_images_render(tmp_path, kind):
    rng = np.random.default_rng(1)
    if kind == "gray":
        array = (rng.random((H, W)) * 255).astype(np.uint8)
    elif kind == "rgba":
        array = (rng.random((H, W, 4)) * 255).astype(np.uint8)
    else:
        array = (rng.random((H, W, 3)) * 65535).astype(np.uint16)
    image_path, disparity_path = _scene(tmp_path, image=array)
    if kind == "rgba":
        with pytest.warns(InputWarning, match="alpha"):
            code, out = _run(tmp_path, image_path, disparity_path, "--K", "0")
            source = read_image(image_path)
    else:
        code, out = _run(tmp_path, image_path, disparity_path, "--K", "0")
        source = read_image(image_path)
    assert code == 0
    rendered = read_image(out / "scene_K0_f0.90.png")
    assert rendered.shape == (3, H, W)
    assert np.abs(rendered - source).max() <= 1.5 / 255  # K = 0: the input, as read
    if kind == "gray":
        assert np.array_equal(rendered[0], rendered[1])


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--K", "-5"], "--K"),
        (["--K", "nan"], "--K"),
        (["--focus_disparity", "1.5"], "--focus_disparity"),
        (["--blades", "2"], "--blades"),
        (["--focus_xy", "3"], "--focus_xy"),
        # Tiles must advance by >= 32 px: 40 with tile 64 passed parsing, then failed every input in latent units.
        (["--tile_size", "64", "--tile_overlap", "40"], "--tile_overlap must be a multiple of 8 px in [0, --tile_size - 32] = [0, 32]"),
    ],
)
def test_invalid_arguments_exit_2_naming_the_flag(tmp_path, capsys, argv, flag):
    image_path, disparity_path = _scene(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, image_path, disparity_path, *argv)
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err


def test_missing_files_exit_2_naming_flag_and_file(tmp_path, capsys):
    image_path, disparity_path = _scene(tmp_path)
    for argv, flag, missing in (
        ([tmp_path / "nope.png", disparity_path], "--image", "nope.png"),
        ([image_path, tmp_path / "nope.npy"], "--disparity", "nope.npy"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            _run(tmp_path, *argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and flag in err and missing in err
    with pytest.raises(SystemExit):
        inference_hf.parse_args(["--image", str(image_path)])  # --disparity missing
    assert "--disparity" in capsys.readouterr().err


def test_focus_pixel_out_of_bounds_fails_the_item(tmp_path, capsys):
    image_path, disparity_path = _scene(tmp_path)
    code, out = _run(tmp_path, image_path, disparity_path, "--focus_xy", str(W), "3", "--K", "4")
    err = capsys.readouterr().err
    assert code == 1 and "--focus_xy" in err and f"[0, {W - 1}]" in err
    assert not list(out.glob("scene_*.png"))


def test_corrupt_disparity_fails_with_its_name(tmp_path, capsys):
    image_path, _ = _scene(tmp_path)
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"garbage")
    code, _ = _run(tmp_path, image_path, bad, "--K", "4")
    assert code == 1 and "broken.npy" in capsys.readouterr().err


def test_batch_reports_and_skips_a_bad_item_keeping_the_others(tmp_path, monkeypatch, capsys):
    """Batch policy (CONTRIBUTING): a failing input is reported and skipped, the rest is written, exit 1."""
    image_path, disparity_path = _scene(tmp_path)
    good = inference_hf.pair_inputs(str(image_path), str(disparity_path))[0]

    def broken():
        raise ValueError("cannot decode image 'bad.png'")

    monkeypatch.setattr(inference_hf, "select_inputs", lambda args: [PendingInput("bad", broken), good])
    code, out = _run(tmp_path, image_path, disparity_path, "--K", "4", "--focus_disparity", "0.2")
    err = capsys.readouterr().err
    assert code == 1 and "bad" in err and "cannot decode image 'bad.png'" in err
    assert (out / "scene_K4_f0.20.png").is_file()


# ------------------------------------------------------------------------------------------ folder inputs
EBB = Path(__file__).resolve().parents[2] / "test_data" / "ebb"


def _run_folder(root, out, *extra):
    return inference_hf.main(["--renderer", "classical", "--test_data_dir", str(root), "--output_dir", str(out),
                              "--max_side", "64", "--K", "3", "--device", "cpu", *extra])


def test_folder_input_focuses_on_each_subject_mask(tmp_path):
    assert _run_folder(EBB, tmp_path) == 0
    # The masks' median disparities are the sample set's focus planes (meta.json: 0.168, 0.949, 0.274).
    expected = ["scene00_K3_f0.17.png", "scene01_K3_f0.95.png", "scene02_K3_f0.27.png"]
    assert sorted(p.name for p in tmp_path.glob("*_K3_*.png")) == expected
    assert read_image(tmp_path / expected[0]).shape == (3, 46, 64)  # 223 x 160 shrunk to --max_side 64
    assert all((tmp_path / f"scene0{i}_contact_sheet.png").is_file() for i in range(3))
    assert not (tmp_path / "contact_sheet.png").exists()


def test_folder_data_id_filters_and_reports_no_match(tmp_path, capsys):
    assert _run_folder(EBB, tmp_path / "one", "--data_id", "scene01") == 0
    assert [p.name for p in (tmp_path / "one").glob("*_K3_*.png")] and all(
        p.name.startswith("scene01") for p in (tmp_path / "one").glob("*.png"))
    assert _run_folder(EBB, tmp_path / "none", "--data_id", "nothing*") == 1
    assert "nothing*" in capsys.readouterr().err


def test_folder_with_a_corrupt_input_reports_it_and_keeps_the_others(tmp_path, capsys):
    root = tmp_path / "ebb"
    shutil.copytree(EBB, root)
    (root / "input" / "scene01.png").write_bytes(b"broken")
    assert _run_folder(root, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "scene01" in err and "cannot decode" in err
    written = sorted(p.name.split("_")[0] for p in (tmp_path / "out").glob("*_K3_*.png"))
    assert written == ["scene00", "scene02"]


def test_a_flat_folder_input_without_its_disparity_fails_and_its_own_renders_are_not_inputs(tmp_path, capsys):
    """``folder`` layout, ``<name>.png`` + ``<name>.npy``: an image without its ``.npy`` is a failed input (named,
    exit 1; it used to be a warning and exit 0, against the README). Rendering into that folder and again: the
    run's own renders are outputs, not inputs missing a disparity (they used to draw one warning each)."""
    root = tmp_path / "flat"
    root.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        save_image(root / f"{name}.png", rng.random((3, 24, 32)))
        np.save(root / f"{name}.npy", rng.random((24, 32)).astype(np.float32))
    save_image(root / "nodisp.png", rng.random((3, 24, 32)))
    assert _run_folder(root, root) == 1
    err = capsys.readouterr().err
    assert "nodisp" in err and str(root / "nodisp.npy") in err
    assert sorted(p.name.split("_K")[0] for p in root.glob("*_K3_*.png")) == ["a", "b"]
    (root / "nodisp.png").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _run_folder(root, root) == 0
    assert not [str(w.message) for w in caught if "disparity" in str(w.message)]
    assert sorted(p.name.split("_K")[0] for p in root.glob("*_K3_*.png")) == ["a", "b"]


def test_an_output_dir_that_cannot_be_written_is_one_error_naming_the_flag(tmp_path, capsys, monkeypatch):
    """A folder this process may not write (read-only, immutable, another user's): one ``error:`` line naming
    --output_dir, the folder and the reason, exit 2, before any input is read. It used to be a traceback from the
    first manifest write (exit 1). The folder's permissions are simulated: root (CI) may write anywhere."""
    import errno
    import tempfile

    image, disparity = _scene(tmp_path)
    out = tmp_path / "locked"
    out.mkdir()

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(dir) / ".write-check-x"))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    code = inference_hf.main(["--renderer", "classical", "--image", str(image), "--disparity", str(disparity),
                              "--output_dir", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1
    assert f"--output_dir '{out}' cannot be written: Permission denied. Choose a folder" in err
    assert list(out.iterdir()) == []


def test_missing_test_data_dir_exits_2(tmp_path, capsys):
    assert _run_folder(tmp_path / "absent", tmp_path / "out") == 2
    assert "absent" in capsys.readouterr().err


@pytest.mark.parametrize("renderer", ["gaussian", "identity"])
def test_baseline_renderers_run_end_to_end(tmp_path, renderer):
    out = tmp_path / renderer
    code = inference_hf.main(["--renderer", renderer, "--demo", "--max_side", "96", "--K", "6",
                              "--focus_disparity", "0.5", "--output_dir", str(out), "--no_contact_sheet"])
    assert code == 0
    renders = sorted(out.glob("motorcycle_K6*.png"))
    assert len(renders) == 1
    rendered = read_image(renders[0])
    assert rendered.shape[0] == 3 and max(rendered.shape[1:]) == 96
    if renderer == "identity":
        from data.demo import load_motorcycle
        from data.inference_io import conform_item, limit_size

        item = limit_size(conform_item("motorcycle", *load_motorcycle()), 96)
        np.testing.assert_allclose(rendered, np.asarray(item.image), atol=1 / 255 + 1e-6)


# ------------------------------------------------------------------------------------------ outputs never lost
def _flat_folder(root, names):
    """The `folder` layout: <name>.png + <name>.npy, each image a different random texture."""
    root.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        image = np.random.default_rng(index).random((3, H, W)).astype(np.float32)
        save_image(root / f"{name}.png", image)
        np.save(root / f"{name}.npy", np.full((H, W), 0.5, np.float32))
    return root


@pytest.mark.parametrize("names", [("my scene", "my_scene"), ("场景", "风景")])
def test_inputs_whose_names_clean_alike_get_distinct_outputs(tmp_path, names):
    """`my scene` and `my_scene` clean to one name, and non-ASCII names used to clean to `image`: every input
    keeps its own renders; Unicode letters are kept, and an already clean name keeps its name."""
    root = _flat_folder(tmp_path / "photos", names)
    out = tmp_path / "out"
    assert _run_folder(root, out, "--renderer", "identity", "--focus_disparity", "0.5") == 0
    renders = sorted(out.glob("*_K3_f0.50.png"))
    sheets = sorted(out.glob("*_contact_sheet.png"))
    assert len(renders) == 2 and len(sheets) == 2
    # identity renders: each output holds its own input (one did not overwrite the other)
    originals = sorted(read_image(root / f"{n}.png").sum() for n in names)
    assert np.allclose(sorted(read_image(p).sum() for p in renders), originals, rtol=1e-3)
    if names[1] == "my_scene":
        assert (out / "my_scene_K3_f0.50.png").is_file()
    else:
        assert {p.name for p in renders} == {f"{n}_K3_f0.50.png" for n in names}
    # deterministic: a second run into a fresh folder names them alike
    assert _run_folder(root, tmp_path / "again", "--renderer", "identity", "--focus_disparity", "0.5") == 0
    assert sorted(p.name for p in (tmp_path / "again").glob("*.png")) == sorted(p.name for p in out.glob("*.png"))


def test_an_output_never_replaces_an_input_file(tmp_path, capsys):
    """--output_dir is the photo's folder and the photo is called contact_sheet.png: the photo survives and
    the contact sheet goes next to it under another name."""
    out = tmp_path / "photos"
    out.mkdir()
    image_path, disparity_path = _scene(out, name="contact_sheet")
    before = image_path.read_bytes(), disparity_path.read_bytes()
    code = inference_hf.main(["--renderer", "identity", "--image", str(image_path), "--disparity",
                              str(disparity_path), "--K", "3", "--output_dir", str(out)])
    assert code == 0
    assert (image_path.read_bytes(), disparity_path.read_bytes()) == before
    sheets = [p for p in out.glob("contact_sheet*.png") if p != image_path and "_K3_" not in p.name]
    assert len(sheets) == 1 and read_image(sheets[0]).shape[1] > H  # the labelled sheet
    assert "contact_sheet.png" in capsys.readouterr().out  # the renamed output is announced


def test_ebb_folder_with_a_missing_depth_renders_the_others(tmp_path, capsys):
    root = tmp_path / "ebb"
    shutil.copytree(EBB, root)
    (root / "depth" / "scene01_pred.npy").unlink()
    assert _run_folder(root, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "scene01" in err and "scene01_pred.npy" in err
    assert sorted(p.name.split("_")[0] for p in (tmp_path / "out").glob("*_K3_*.png")) == ["scene00", "scene02"]


def test_ebb_folder_with_a_missing_ground_truth_renders_everything(tmp_path):
    """Inference does not read ground truth: a GT listed in meta.json but absent changes nothing."""
    root = tmp_path / "ebb"
    shutil.copytree(EBB, root)
    (root / "bokeh" / "scene01_K8.43_f0.949.png").unlink()
    assert _run_folder(root, tmp_path / "out") == 0
    assert len(list((tmp_path / "out").glob("*_K3_*.png"))) == 3


def test_rendering_into_the_input_folder_and_again(tmp_path):
    """Renders written among the inputs are this tool's outputs: the next run neither reads them as inputs nor
    fails on them, and renders the same inputs again."""
    root = tmp_path / "ebb"
    shutil.copytree(EBB, root)
    for _ in range(2):
        assert _run_folder(root, root / "input", "--renderer", "identity") == 0
        assert sorted(p.name for p in (root / "input").glob("*_K3_*.png")) == [
            "scene00_K3_f0.17.png", "scene01_K3_f0.95.png", "scene02_K3_f0.27.png"]
    # Another strength, then the first again: the outputs of every earlier run stay known as outputs.
    assert _run_folder(root, root / "input", "--renderer", "identity", "--K", "5") == 0
    assert _run_folder(root, root / "input", "--renderer", "identity") == 0
    assert len(list((root / "input").glob("*_K5_*.png"))) == 3 and len(list((root / "input").glob("*_K3_*.png"))) == 3
    assert sorted(p.name for p in (root / "input").glob("scene0?.png")) == ["scene00.png", "scene01.png", "scene02.png"]


def test_transposed_disparity_fails_its_input_with_the_cause(tmp_path, capsys):
    image_path, disparity_path = _scene(tmp_path, disparity=np.full((W, H), 0.5, np.float32))
    code, out = _run(tmp_path, image_path, disparity_path, "--K", "3")
    assert code == 1 and "looks transposed" in capsys.readouterr().err
    assert not list(out.glob("scene_K*.png"))


def test_depth_like_values_without_depth_flag_point_to_it(tmp_path):
    depth = np.linspace(2.7, 30.0, H * W, dtype=np.float32).reshape(H, W)
    image_path, disparity_path = _scene(tmp_path, disparity=depth)
    with pytest.warns(InputWarning, match="pass --depth"):
        code, _ = _run(tmp_path, image_path, disparity_path, "--K", "3", "--focus_disparity", "0.5")
    assert code == 0


def test_a_long_render_shows_its_progress_in_rows(tmp_path, monkeypatch, capsys):
    """Renders longer than ROW_PROGRESS_DELAY_S show a row bar (here the delay is 0, so every render does)."""
    monkeypatch.setattr(renderers, "ROW_PROGRESS_DELAY_S", 0.0)
    image_path, disparity_path = _scene(tmp_path)
    code, _ = _run(tmp_path, image_path, disparity_path, "--K", "3", "--focus_disparity", "0.5")
    err = capsys.readouterr().err
    assert code == 0 and "K=3 f=0.50" in err and f"/{H} [" in err and "row/s" in err, err


def test_max_pixels_refuses_a_large_input_and_can_be_raised(tmp_path, capsys):
    import data.io

    image_path, disparity_path = tmp_path / "photo.png", tmp_path / "photo.npy"
    save_image(image_path, np.full((3, 40, 60), 0.5, np.float32))
    np.save(disparity_path, np.linspace(0, 1, 2400, dtype=np.float32).reshape(40, 60))
    common = ["--renderer", "classical", "--image", str(image_path), "--disparity", str(disparity_path), "--K", "2",
              "--no_contact_sheet"]
    default = data.io.MAX_PIXELS
    try:
        assert inference_hf.main([*common, "--output_dir", str(tmp_path / "a"), "--max_pixels", "1000"]) == 1
        assert "photo.png' declares 40 x 60" in capsys.readouterr().err
        assert inference_hf.main([*common, "--output_dir", str(tmp_path / "b"), "--max_pixels", "2400"]) == 0
    finally:
        data.io.set_max_pixels(default)


def test_a_contact_sheet_that_cannot_be_drawn_never_fails_the_renders(tmp_path, monkeypatch, capsys):
    """Issue 23 item 12: the renders are the results, the sheet a preview: its failure is one warning, exit 0."""
    import inference.batch

    def broken_sheet(*args, **kwargs):
        raise ValueError("sheet tile of 320 x 746667 px")

    monkeypatch.setattr(inference.batch, "item_contact_sheet", broken_sheet)
    image_path, disparity_path = _scene(tmp_path)
    code, out = _run(tmp_path, image_path, disparity_path, "--K", "4", "8", "--focus_disparity", "0.2")
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: contact sheet 'contact_sheet.png' not written (ValueError: sheet tile of 320 x 746667 px)" in err
    assert sorted(p.name for p in out.glob("*.png")) == ["scene_K4_f0.20.png", "scene_K8_f0.20.png"]
    assert json.loads((out / "run_config.json").read_text())["outputs"] == ["scene_K4_f0.20.png", "scene_K8_f0.20.png"]


def test_a_very_thin_image_renders_with_a_bounded_sheet(tmp_path):
    """A 3 x 700 px image (the issue's 7000 x 3 scaled down): rendered, and its sheet stays small."""
    image_path, disparity_path = _scene(tmp_path, image=np.random.default_rng(1).random((3, 700, 3)).astype(np.float32),
                                        disparity=np.full((700, 3), 0.5, np.float32))
    code, out = _run(tmp_path, image_path, disparity_path, "--K", "4", "--focus_disparity", "0.5")
    assert code == 0 and (out / "scene_K4_f0.50.png").is_file()
    sheet = read_image(out / "contact_sheet.png")
    assert sheet.shape[1] * sheet.shape[2] < 4000 * 1000


def test_published_pngdepth_renders_are_written_at_the_disparity_size(tmp_path):
    # --protocol published reads pngdepth as the released code does: the 48 x 24 image is rendered at
    # 1024 x 512 (long side >= 1024) and each render is resized back to the depth PNG's 48 x 24.
    from PIL import Image

    root = tmp_path / "set"
    for sub in ("original", "depth", "mask"):
        (root / sub).mkdir(parents=True)
    image = (np.random.default_rng(0).random((24, 48, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(root / "original" / "a.png")
    Image.fromarray(np.tile(np.linspace(20, 230, 48).astype(np.uint8), (24, 1))).save(root / "depth" / "a_depth.png")
    Image.fromarray(np.full((24, 48), 255, np.uint8)).save(root / "mask" / "a.png")
    out = tmp_path / "out"
    code = inference_hf.main(["--renderer", "identity", "--test_data_dir", str(root), "--output_dir", str(out),
                              "--protocol", "published", "--focus_protocol", "published", "--K", "5",
                              "--device", "cpu", "--no_contact_sheet"])
    assert code == 0
    renders = sorted(out.glob("a_K5_*.png"))
    assert len(renders) == 3  # far, subject, near
    rendered = read_image(renders[0])
    assert rendered.shape == (3, 24, 48)
    from data.published import published_resize_output

    up = np.asarray(Image.fromarray(image).resize((1024, 512), Image.Resampling.LANCZOS), np.float32) / 255
    expected = published_resize_output(up.transpose(2, 0, 1), (24, 48))  # identity: up to 1024 x 512 and back
    assert np.abs(rendered - expected).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("source", ["folder", "image"])
def test_a_run_recorded_before_the_disparity_rule_still_resumes(tmp_path, capsys, source):
    """run_config.json written before ``disparity_rule`` was recorded (``disparity_normalise`` then defaulted to
    "auto", which test sets ignored): the rerun with today's defaults resumes and renders nothing again, while a
    real change of the rule is still refused."""
    if source == "folder":
        root = tmp_path / "ebb"
        shutil.copytree(EBB, root)
        run = lambda *extra: _run_folder(root, tmp_path / "out", "--renderer", "identity", *extra)  # noqa: E731
    else:
        image, disparity = _scene(tmp_path)
        run = lambda *extra: _run(tmp_path, image, disparity, "--renderer", "identity", *extra)[0]  # noqa: E731
    assert run() == 0
    config_path = tmp_path / "out" / "run_config.json"
    config = json.loads(config_path.read_text())
    assert config["disparity_normalise"] is None and config["disparity_rule"]
    del config["disparity_rule"]
    config["disparity_normalise"] = "auto"  # as the older version wrote it
    config_path.write_text(json.dumps(config))
    capsys.readouterr()
    assert run() == 0
    printed = capsys.readouterr()
    assert "other settings" not in printed.err and "resumed" in printed.out
    assert run("--disparity_normalise", "never") == 2
    assert "--disparity_normalise (was None, now 'never')" in capsys.readouterr().err
