"""prepare_data.py end to end, in-process, offline: tiny Depth Anything and tiny BiRefNet stand-in from folders."""

import json
import os
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

import prepare_data
from data.io import read_disparity, read_image, save_image
from tests.forked_ranks import GROUP as FORKED
from tests.models.test_depth import save_tiny_depth_anything
from tests.models.test_segment import save_tiny_segmenter


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {"depth": str(save_tiny_depth_anything(root / "depth")), "mask": str(save_tiny_segmenter(root / "mask"))}


@pytest.fixture
def photos(tmp_path):
    """Two real photos of different sizes, extensions and nesting: astronaut.png, cats/chelsea.JPG."""
    folder = tmp_path / "photos"
    save_image(folder / "astronaut.png", skdata.astronaut()[::4, ::4].transpose(2, 0, 1) / 255.0)  # 128 x 128
    save_image(folder / "cats" / "chelsea.JPG", skdata.chelsea()[::3, ::3].transpose(2, 0, 1) / 255.0)  # 100 x 151
    return folder


def run(weights, *args):
    argv = ["--depth_model", weights["depth"], "--mask_model", weights["mask"], "--device", "cpu",
            "--depth_resolution", "28", "--mask_resolution", "32", *map(str, args)]
    return prepare_data.main(argv)


def check_outputs(root, name, image_size):
    """The files inference reads: disparity .npy float32 (H, W) in [0, 1] and an 8-bit mask, both image-sized."""
    disparity = np.load(root / "depth" / f"{name}_pred.npy")
    assert disparity.dtype == np.float32 and disparity.shape == image_size
    assert disparity.min() == 0 and disparity.max() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read back with no repair at all
        read_back = read_disparity(root / "depth" / f"{name}_pred.npy", size=image_size)
    np.testing.assert_array_equal(read_back[0], disparity)
    mask = cv2.imread(str(root / "mask" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    assert mask.dtype == np.uint8 and mask.shape == image_size
    return disparity, mask


def test_folder_run_writes_the_ebb_layout(weights, photos, tmp_path):
    out = tmp_path / "prepared"
    assert run(weights, "--input_dir", photos, "--output_dir", out, "--batch_size", 2) == 0
    check_outputs(out, "astronaut", (128, 128))
    check_outputs(out, "cats_chelsea", (100, 151))  # nested photos are prepared flat (the EBB layout)
    assert (out / "input" / "cats_chelsea.JPG").read_bytes() == (photos / "cats" / "chelsea.JPG").read_bytes()
    assert read_image(out / "input" / "astronaut.png").shape == (3, 128, 128)
    config = json.loads((out / "prepare_data.json").read_text())
    assert config["device"] == "cpu" and config["copy_inputs"] is True
    assert not list(out.rglob(".*.tmp"))  # no temporary file left behind


@pytest.fixture
def same_size_photos(tmp_path):
    """Two different photos of one size (100 x 150), so a batch of 2 really holds both, and one of another size."""
    folder = tmp_path / "same_size"
    save_image(folder / "coffee.png", skdata.coffee()[::4, ::4].transpose(2, 0, 1) / 255.0)
    save_image(folder / "chelsea.png", skdata.chelsea()[:, :450][::3, ::3].transpose(2, 0, 1) / 255.0)
    save_image(folder / "astronaut.png", skdata.astronaut()[::4, ::4].transpose(2, 0, 1) / 255.0)  # 128 x 128
    return folder


class Watched(torch.nn.Module):
    """Wraps the depth network: ``hook(pixel_values, predicted_depth)`` sees (and may edit) every forward."""

    def __init__(self, network, hook):
        super().__init__()
        self.network, self.config, self.hook = network, network.config, hook

    def forward(self, pixel_values):
        output = self.network(pixel_values=pixel_values)
        self.hook(pixel_values, output.predicted_depth)
        return output


def watch_depth_network(monkeypatch, hook):
    """Make the script's depth loader wrap the network it loads in :class:`Watched`."""
    load = prepare_data.load_depth_estimator

    def loader(*args, **kwargs):
        estimator = load(*args, **kwargs)
        estimator.model = Watched(estimator.model, hook)
        return estimator

    monkeypatch.setattr(prepare_data, "load_depth_estimator", loader)


def test_batch_size_does_not_change_results(weights, same_size_photos, tmp_path, monkeypatch):
    sizes = []
    watch_depth_network(monkeypatch, lambda pixel_values, _: sizes.append(pixel_values.shape[0]))
    assert run(weights, "--input_dir", same_size_photos, "--output_dir", tmp_path / "b1", "--batch_size", 1, "--no_mask") == 0
    assert sizes == [1, 1, 1]
    sizes.clear()
    assert run(weights, "--input_dir", same_size_photos, "--output_dir", tmp_path / "b4", "--batch_size", 4, "--no_mask") == 0
    assert sorted(sizes) == [1, 2]  # the two 100 x 150 photos went through the network together
    for name in ("coffee", "chelsea", "astronaut"):
        a, b = (np.load(tmp_path / d / "depth" / f"{name}_pred.npy") for d in ("b1", "b4"))
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert not (tmp_path / "b1" / "mask").exists()


def test_one_bad_prediction_fails_only_its_image(weights, same_size_photos, tmp_path, monkeypatch, capsys):
    """A prediction with no finite value (here: for the all-black photo) fails that photo alone; the other
    photos of its batch are written, and the run exits 1."""
    save_image(same_size_photos / "black.png", np.zeros((3, 100, 150)))

    black_batches = []

    def nan_for_black(pixel_values, predicted_depth):
        black = pixel_values.amax(dim=(1, 2, 3)) < -1.5  # ImageNet-normalised black: max (0 - 0.406) / 0.225
        if black.any():
            black_batches.append(len(black))
            predicted_depth[black] = float("nan")

    watch_depth_network(monkeypatch, nan_for_black)
    out = tmp_path / "prepared"
    assert run(weights, "--input_dir", same_size_photos, "--output_dir", out, "--batch_size", 4) == 1
    assert black_batches == [3]  # black, chelsea and coffee (all 100 x 150) went through the network together
    check_outputs(out, "coffee", (100, 150))  # batched with the black photo, still written
    check_outputs(out, "chelsea", (100, 150))
    check_outputs(out, "astronaut", (128, 128))
    assert not (out / "depth" / "black_pred.npy").exists() and not (out / "mask" / "black.png").exists()
    err = capsys.readouterr().err
    assert "failed: " in err and "black.png: depth model:" in err and "no valid" in err
    assert err.count("  failed: ") == 1


def test_metadata_is_written_atomically(weights, photos, tmp_path, monkeypatch):
    """prepare_data.json goes through a temporary file + os.replace, like every other output."""
    replaced, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: replaced.append(Path(dst)) or real_replace(src, dst))
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "prepare_data.json").write_text("{stale")
    assert run(weights, "--input_dir", photos, "--output_dir", out, "--no_mask") == 0
    assert out / "prepare_data.json" in replaced
    assert json.loads((out / "prepare_data.json").read_text())["no_mask"] is True
    assert not list(out.rglob(".*.tmp"))


def test_corrupt_and_clashing_files_are_reported_skipped_and_fail_the_run(weights, photos, tmp_path, capsys):
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    (photos / "notes.txt").write_text("not an image")
    shutil.copy(photos / "astronaut.png", photos / "twin.png")
    shutil.copy(photos / "astronaut.png", photos / "twin.jpg")  # same name, two files: outputs would collide
    out = tmp_path / "prepared"
    assert run(weights, "--input_dir", photos, "--output_dir", out) == 1
    check_outputs(out, "astronaut", (128, 128))
    check_outputs(out, "cats_chelsea", (100, 151))
    assert not (out / "depth" / "broken_pred.npy").exists() and not (out / "depth" / "twin_pred.npy").exists()
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "cannot decode" in err
    assert "twin.jpg" in err and "notes.txt" in err


def test_existing_outputs_are_kept_unless_overwrite(weights, photos, tmp_path):
    out = tmp_path / "prepared"
    assert run(weights, "--input_dir", photos, "--output_dir", out) == 0
    depth_file, mask_file = out / "depth" / "astronaut_pred.npy", out / "mask" / "astronaut.png"
    computed = np.load(depth_file)
    np.save(depth_file, np.full_like(computed, 0.5))  # a marker a rerun must not replace
    mask_file.unlink()  # a missing output is made, the others are kept
    assert run(weights, "--input_dir", photos, "--output_dir", out) == 0
    assert (np.load(depth_file) == 0.5).all() and mask_file.exists()
    assert run(weights, "--input_dir", photos, "--output_dir", out, "--overwrite") == 0
    np.testing.assert_array_equal(np.load(depth_file), computed)


def test_in_place_next_to_an_ebb_input_folder(weights, photos, tmp_path, capsys):
    root = tmp_path / "EBB"
    shutil.copytree(photos, root / "input")
    assert run(weights, "--input_dir", root / "input", "--no_mask") == 0
    # In place nothing is moved: a photo in a subfolder (which inference would not read) is left out, with a note.
    assert sorted(p.name for p in (root / "depth").iterdir()) == ["astronaut_pred.npy"]
    assert "1 image(s) in subfolders of the EBB input folder are skipped (e.g. 'cats/chelsea.JPG')" in \
        capsys.readouterr().err
    assert sorted(p.name for p in root.iterdir()) == ["depth", "input", "prepare_data.json"]
    assert sorted(p.relative_to(root).as_posix() for p in (root / "input").rglob("*")) == [
        "input/astronaut.png", "input/cats", "input/cats/chelsea.JPG"]


def test_output_folder_inside_the_input_folder_is_not_read_back(weights, photos):
    out = photos / "prepared"
    assert run(weights, "--input_dir", photos, "--output_dir", out) == 0
    assert run(weights, "--input_dir", photos, "--output_dir", out, "--overwrite") == 0
    assert sorted(p.name for p in (out / "depth").rglob("*.npy")) == ["astronaut_pred.npy", "cats_chelsea_pred.npy"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--depth_model", "bokehdiff-tests/no-such-depth-model"], "`hf download bokehdiff-tests/no-such-depth-model --local-dir DIR`) and pass that folder instead of the hub id: --depth_model DIR."),
        (["--mask_model", "bokehdiff-tests/no-such-mask-model", "--mask_revision", "main"],
         ": --mask_model DIR, or --no_mask to skip masks."),
        # BiRefNet-style models run their repository's code: an unpinned hub id needs an explicit revision.
        (["--mask_model", "bokehdiff-tests/no-such-mask-model"], "no pinned revision, and loading it runs the Python"),
        (["--fp16"], "--fp16 needs a CUDA device"),
        (["--batch_size", "0"], "--batch_size must be >= 1"),
    ],
)
def test_bad_options_give_one_error_naming_the_flag(weights, photos, tmp_path, capsys, args, expected):
    assert run(weights, "--input_dir", photos, "--output_dir", tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("error:") == 1
    assert not (tmp_path / "out" / "depth").exists()


def test_output_dir_required_unless_input_is_an_ebb_input_folder(weights, photos, capsys):
    assert run(weights, "--input_dir", photos) == 2
    assert "--output_dir is required" in capsys.readouterr().err


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_data.parse_args(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--no_mask" in out
    from models.segment import BIREFNET_REVISION
    assert BIREFNET_REVISION in " ".join(out.split()) and BIREFNET_REVISION in (Path(prepare_data.__file__).parent
                                                                               / "README.md").read_text()


def test_prepared_test_data_is_rendered_by_inference_hf(weights, tmp_path):
    """Issue 7's acceptance check: prepare_data.py over test_data/'s photos writes what inference_hf.py reads.
    Every photo renders (exit 0), once, at the focus of its written subject mask (the automatic focus)."""
    import inference_hf
    from data.focus import focus_from_mask, focus_from_pixel

    photos = tmp_path / "photos"
    photos.mkdir()
    sources = sorted((Path(__file__).resolve().parents[2] / "test_data" / "ebb" / "input").glob("*.png"))
    assert len(sources) >= 2
    for source in sources:
        shutil.copy(source, photos / source.name)
    out = tmp_path / "prepared"
    assert run(weights, "--input_dir", photos, "--output_dir", out, "--batch_size", 2) == 0
    renders = tmp_path / "renders"
    argv = ["--renderer", "classical", "--test_data_dir", str(out), "--output_dir", str(renders), "--K", "8"]
    assert inference_hf.main(argv) == 0
    expected, centre = set(), set()
    for source in sources:
        disparity, mask = check_outputs(out, source.stem, read_image(source).shape[1:])
        focus = focus_from_mask(disparity, mask / 255.0)
        expected.add(f"{source.stem}_K8_f{focus:.2f}.png")
        centre.add(f"{source.stem}_K8_f{focus_from_pixel(disparity, disparity.shape[1] // 2, disparity.shape[0] // 2):.2f}.png")
    assert expected != centre  # the names tell whether the masks were used (else: centre focus)
    assert {p.name for p in renders.glob("*_K8_f*.png")} == expected
    for source in sources:
        (render,) = renders.glob(f"{source.stem}_K8_f*.png")
        assert read_image(render).shape == read_image(source).shape


def test_outputs_that_would_replace_an_input_image_are_refused(weights, tmp_path, capsys):
    """Photos in <root>/mask with --output_dir <root>: the masks would be written over the photos."""
    root = tmp_path / "root"
    save_image(root / "mask" / "astronaut.png", skdata.astronaut()[::4, ::4].transpose(2, 0, 1) / 255.0)
    before = (root / "mask" / "astronaut.png").read_bytes()
    assert run(weights, "--input_dir", root / "mask", "--output_dir", root) == 2
    err = capsys.readouterr().err
    assert "would replace" in err and "astronaut.png" in err and "--output_dir" in err
    assert (root / "mask" / "astronaut.png").read_bytes() == before
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["mask", "mask/astronaut.png"]


@pytest.mark.xdist_group(FORKED)
def test_two_processes_prepare_what_one_prepares(weights, photos, tmp_path, capsys):
    """2 ranks (gloo on CPU; tests/forked_ranks.py): each prepares its block of the photos; the files and the one
    prepare_data.json equal a 1-process run's bit for bit; a rerun keeps everything."""
    from tests.forked_ranks import REPO, run_ranks

    out = tmp_path / "prepared"
    args = ["--depth_model", weights["depth"], "--mask_model", weights["mask"], "--device", "cpu",
            "--depth_resolution", "28", "--mask_resolution", "32", "--input_dir", str(photos), "--output_dir", str(out)]
    assert prepare_data.main(args) == 0
    one = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    shutil.rmtree(out)
    proc = run_ranks(2, REPO / "tests" / "scripts" / "prepare_with_tiny_models.py", *args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "prepared 2 image(s), kept 0" in proc.stderr
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == one
    assert prepare_data.main(args) == 0  # a rerun (here in one process) keeps what the two prepared
    assert "prepared 0 image(s), kept 2" in capsys.readouterr().err


def test_nested_and_every_extension_prepared_are_all_rendered(weights, tmp_path, capsys):
    """Issue 23 item 9: what prepare_data accepts (.tif / .webp / .bmp, photos in subfolders), inference reads:
    prepared 4 -> 4 renders, exit 0. Nested photos are written flat (the EBB layout is one level deep)."""
    import inference_hf

    photos = tmp_path / "photos"
    source = read_image(Path(__file__).resolve().parents[2] / "test_data" / "ebb" / "input" / "scene00.png")
    for relative in ("a.tif", "b.webp", "trip/day1/c.bmp", "trip/d.png"):
        save_image(photos / relative, source)
    out = tmp_path / "prepared"
    assert run(weights, "--input_dir", photos, "--output_dir", out, "--no_mask") == 0
    err = capsys.readouterr().err
    assert "note: 2 image(s) in subfolders of --input_dir are prepared flat" in err
    assert "'trip/d.png' -> 'trip_d'" in err or "'trip/day1/c.bmp' -> 'trip_day1_c'" in err
    assert sorted(p.name for p in (out / "depth").iterdir()) == [
        "a_pred.npy", "b_pred.npy", "trip_d_pred.npy", "trip_day1_c_pred.npy"]
    renders = tmp_path / "renders"
    assert inference_hf.main(["--renderer", "classical", "--test_data_dir", str(out), "--output_dir", str(renders),
                              "--K", "8", "--focus_disparity", "0.5", "--no_contact_sheet"]) == 0
    assert sorted(p.name for p in renders.glob("*.png")) == [
        f"{name}_K8_f0.50.png" for name in ("a", "b", "trip_d", "trip_day1_c")]
    # A nested name that flattens onto another photo's name is a clash: both refused, named by their paths.
    save_image(photos / "trip_d.png", source)
    assert run(weights, "--input_dir", photos, "--output_dir", tmp_path / "again", "--no_mask") == 1
    assert "trip/d.png, trip_d.png" in capsys.readouterr().err


def test_a_signal_or_a_full_disk_stops_with_one_line_and_keeps_finished_images(weights, photos, tmp_path, capsys,
                                                                                monkeypatch):
    """Issue 23 items 10-11 for prepare_data.py: SIGTERM after the first image's outputs -> exit 143, that image
    complete; a full disk -> exit 1 naming the folder, no per-image noise; the rerun prepares the rest."""
    import errno
    import signal

    import data.prepare
    from data.io import atomic_write

    out = tmp_path / "prepared"
    real = data.prepare.save_disparity
    calls = []

    def save_then_signal(path, disparity):
        calls.append(path)
        real(path, disparity)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # held until this image's mask and copy are written too

    monkeypatch.setattr(data.prepare, "save_disparity", save_then_signal)
    assert run(weights, "--input_dir", photos, "--output_dir", out) == 143
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM: the images prepared so far are written" in err and "Traceback" not in err
    assert len(list((out / "depth").iterdir())) == 1 and len(list((out / "mask").iterdir())) == 1
    assert len([p for p in (out / "input").rglob("*") if p.is_file()]) == 1

    def full(path, disparity):
        with atomic_write(path):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data.prepare, "save_disparity", full)
    assert run(weights, "--input_dir", photos, "--output_dir", out) == 1
    err = capsys.readouterr().err
    assert f"error: no space left on the device holding '{out / 'depth'}'" in err and "failed:" not in err
    monkeypatch.undo()
    assert run(weights, "--input_dir", photos, "--output_dir", out) == 0
    assert "prepared 1 image(s), kept 1" in capsys.readouterr().err
