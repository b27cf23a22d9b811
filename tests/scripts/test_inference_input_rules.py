"""inference_hf.py (classical renderer): one disparity rule for --image and test sets, stated and recorded; EXR
photos read as linear light."""

import json
import shutil

import numpy as np
import pytest

import inference_hf
from data.exr import write_exr
from data.io import read_image, save_image

H, W = 36, 48


def _files(folder, *, exr=False):
    """A textured photo (sRGB PNG, or its linear EXR: values srgb ** 2.2) and a disparity in [0.2, 0.7] (in
    [0, 1] but not spanning it: min-max normalising it changes every CoC)."""
    rng = np.random.default_rng(0)
    srgb = rng.random((3, H, W)).astype(np.float32)
    disparity = np.full((H, W), 0.2, np.float32)
    disparity[8:28, 12:36] = 0.7
    folder.mkdir(parents=True, exist_ok=True)
    if exr:
        image = write_exr(folder / "a.exr", {c: srgb[i] ** 2.2 for i, c in enumerate("RGB")})
    else:
        image = save_image(folder / "a.png", srgb, bits=16)
    np.save(folder / "a.npy", disparity)
    return image, folder / "a.npy"


def _render(out, *source, extra=()):
    argv = ["--renderer", "classical", *source, "--K", "12", "--focus_disparity", "0.7", "--no_contact_sheet",
            "--output_dir", str(out), "--device", "cpu", *extra]
    assert inference_hf.main(argv) == 0
    (render,) = out.glob("a_K12_f0.70.png")
    return read_image(render), json.loads((out / "run_config.json").read_text())


def test_folder_and_image_modes_render_the_same_files_alike_under_one_rule(tmp_path, capsys):
    image, disparity = _files(tmp_path / "set")
    single, config = _render(tmp_path / "single", "--image", str(image), "--disparity", str(disparity))
    assert config["disparity_rule"] == ["--image: auto (a map already in [0, 1] is kept, one outside it is min-max "
                                        "normalised with a warning), the default for --image; --disparity_normalise "
                                        "changes it"]
    # The folder layout's own rule (always) is stated, printed once, and recorded.
    default, config = _render(tmp_path / "folder_default", "--test_data_dir", str(tmp_path / "set"))
    out = capsys.readouterr().out
    assert out.count("note: disparity: folder layout: always (") == 1
    assert config["disparity_rule"][0].startswith("folder layout: always (")
    assert np.abs(default - single).max() > 10 / 255  # a rescaled map: other CoCs
    # --disparity_normalise now applies to the folder layout: the same rule gives the same render.
    same, config = _render(tmp_path / "folder_auto", "--test_data_dir", str(tmp_path / "set"),
                           extra=("--disparity_normalise", "auto"))
    assert config["disparity_rule"][0].startswith("folder layout: auto (") and "--disparity_normalise" in \
        config["disparity_rule"][0]
    np.testing.assert_array_equal(same, single)


def test_published_protocol_and_physical_layouts_refuse_the_flag(tmp_path, capsys):
    _files(tmp_path / "set")
    argv = ["--renderer", "classical", "--test_data_dir", str(tmp_path / "set"), "--output_dir",
            str(tmp_path / "out"), "--device", "cpu", "--disparity_normalise", "auto"]
    assert inference_hf.main([*argv, "--protocol", "published"]) == 2
    assert "--protocol published reads test sets as the released code does" in capsys.readouterr().err
    pngdepth = tmp_path / "pngdepth"
    save_image(pngdepth / "original" / "p.png", np.zeros((3, 16, 16)))
    save_image(pngdepth / "depth" / "p.png", np.zeros((16, 16)))
    argv[argv.index("--test_data_dir") + 1] = str(pngdepth)
    assert inference_hf.main(argv) == 2
    assert "pngdepth folder, whose disparity rule is part of the layout" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["image", "folder"])
def test_a_linear_exr_renders_like_its_srgb_png(tmp_path, capsys, mode):
    png, disparity = _files(tmp_path / "png")
    exr, _ = _files(tmp_path / "exr", exr=True)
    reference, _ = _render(tmp_path / "from_png", "--image", str(png), "--disparity", str(disparity))
    capsys.readouterr()
    if mode == "image":
        got, _ = _render(tmp_path / "from_exr", "--image", str(exr), "--disparity", str(tmp_path / "exr" / "a.npy"))
    else:
        got, _ = _render(tmp_path / "from_exr", "--test_data_dir", str(tmp_path / "exr"),
                         extra=("--disparity_normalise", "auto"))
    assert np.abs(got - reference).max() <= 2 / 255  # read as sRGB, it was ~45 levels too dark
    assert capsys.readouterr().out.count("are taken as scene-linear light") == 1
