"""inference_hf.py with the BokehDiff renderer (the default) on the tiny SDXL stack saved to disk: the published
README command on test_data/, bit-identical reruns, the published adapter format, offline and bad inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import inference_hf
from data.io import read_image
from models.tiny import save_tiny_sdxl
from tests.tiny_weights import trained_tiny_stack, write_published_adapter

EBB = Path(__file__).resolve().parents[2] / "test_data" / "ebb"
NAMES = ("scene00", "scene01", "scene02")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(base folder, adapter folder in the published layout: unprefixed LoRA at the root, small/vae.ckpt)."""
    root = tmp_path_factory.mktemp("weights")
    base = save_tiny_sdxl(root / "base", seed=0)
    adapter = write_published_adapter(trained_tiny_stack(seed=2), root / "adapter")
    return base, adapter


def _fast(base, adapter):
    return ["--pretrained_model_name_or_path", str(base), "--adapter", str(adapter), "--device", "cpu",
            "--max_side", "64", "--no_contact_sheet"]


def test_published_readme_command_with_run_name(weights, tmp_path, capsys):
    base, adapter = weights
    out = tmp_path / "out"
    code = inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(out), "--data_id", "myrun",
                              "--K", "20", "--enable_xformers_memory_efficient_attention", *_fast(base, adapter)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "run name" in printed and "xformers" in printed and "all verified" in printed
    # The published adapter (no training metadata) runs under the published protocol, PISA discretisation
    # included, and its inputs are read as the released code reads them.
    assert "--protocol auto -> published (gamma 1, x0 clamp 1.0" in printed
    assert "PISA with the published occlusion discretisation (--pisa_compat auto)" in printed
    # Focus: the released protocol's subject-mask median on its normalised disparity; K 20, in OUT/myrun.
    from data.published import load_published_ebb

    focus = {n: load_published_ebb(EBB / "input" / f"{n}.png", EBB / "depth" / f"{n}_pred.npy",
                                   EBB / "mask" / f"{n}.png")[2] for n in NAMES}
    expected = [f"{n}_K20_f{focus[n]:.2f}.png" for n in NAMES]
    assert sorted(p.name for p in (out / "myrun").glob("*_K20_*.png")) == expected
    render = read_image(out / "myrun" / expected[0])
    assert render.shape == (3, 46, 64) and np.isfinite(render).all()
    config = json.loads((out / "myrun" / "run_config.json").read_text())
    assert config["renderer"] == "bokehdiff" and config["pretrained_model_name_or_path"] == str(base)


def test_data_id_optional_filter_and_bit_identical_reruns(weights, tmp_path):
    base, adapter = weights
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(out), "--data_id", "scene01",
                                  "--K", "20", "--focus_disparity", "0.3", "--seed", "3", *_fast(base, adapter)]) == 0
        files = sorted(out.glob("*.png"))
        assert [p.name for p in files] == ["scene01_K20_f0.30.png"]
        runs.append(files[0].read_bytes())
    assert runs[0] == runs[1]


def test_image_pair_with_sheet_upsample_and_tiles(weights, tmp_path):
    base, adapter = weights
    out = tmp_path / "pair"
    argv = ["--image", str(EBB / "input" / "scene00.png"), "--disparity", str(EBB / "depth" / "scene00_pred.npy"),
            "--output_dir", str(out), "--K", "10", "--focus_disparity", "0.5", "0.9", "--upsample", "1.5",
            "--tile_mode", "tiled", "--tile_size", "64", "--tile_overlap", "16",
            "--pretrained_model_name_or_path", str(base), "--resume_from_checkpoint", str(adapter),
            "--device", "cpu", "--max_side", "48"]
    assert inference_hf.main(argv) == 0
    assert sorted(p.name for p in out.glob("scene00_K10_*.png")) == ["scene00_K10_f0.50.png", "scene00_K10_f0.90.png"]
    assert read_image(out / "scene00_K10_f0.50.png").shape[1:] == (34, 48)
    assert (out / "contact_sheet.png").is_file()


def test_offline_hub_weights_one_clear_error(tmp_path, capsys):
    code = inference_hf.main(["--image", str(EBB / "input" / "scene00.png"), "--disparity",
                              str(EBB / "depth" / "scene00_pred.npy"), "--output_dir", str(tmp_path), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--renderer classical" in err and "local" in err


def test_adapter_with_foreign_keys_fails_before_rendering(weights, tmp_path, capsys):
    base, adapter = weights
    bad = tmp_path / "bad_adapter"
    (bad / "small").mkdir(parents=True)
    state = load_file(str(adapter / "pytorch_lora_weights.safetensors"))
    state["text_encoder_2.text_model.final_layer_norm.lora_A.weight"] = torch.zeros(4, 32)
    save_file(state, str(bad / "pytorch_lora_weights.safetensors"))
    (bad / "small" / "vae.ckpt").write_bytes((adapter / "small" / "vae.ckpt").read_bytes())
    code = inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(tmp_path / "out"),
                              *_fast(base, bad)])
    assert code == 2
    assert "text_encoder_2.text_model" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.png"))


def test_bad_bokehdiff_flags_exit_2(weights, tmp_path):
    base, adapter = weights
    common = ["--test_data_dir", str(EBB), "--output_dir", str(tmp_path), *_fast(base, adapter)]
    for extra in (["--tile_size", "100"], ["--upsample", "0"], ["--pisa_hardness", "0.5"],
                  ["--resume_from_checkpoint", str(tmp_path / "missing")]):
        with pytest.raises(SystemExit) as exit_info:
            inference_hf.main(common + extra)
        assert exit_info.value.code == 2, extra


def test_focus_changes_the_neural_render_and_foreign_flags_are_reported(weights, tmp_path, capsys):
    base, adapter = weights
    renders = []
    for focus in ("0.1", "0.9"):
        out = tmp_path / focus
        assert inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(out), "--data_id", "scene00",
                                  "--K", "30", "--focus_disparity", focus, "--blades", "6",
                                  "--protocol", "corrected", *_fast(base, adapter)]) == 0
        renders.append(read_image(next(out.glob("scene00_K30_*.png"))))
    # PISA sees disparity and CoC (corrected protocol: CoC radii in pixels of this 64-px frame; the published
    # units treat every frame as 512 px, where these radii stay below one token)
    assert np.abs(renders[0] - renders[1]).max() > 1 / 255
    assert "note: --blades is ignored by --renderer bokehdiff" in capsys.readouterr().out


def test_protocol_flags_published_focus_planes_and_pisa_sampling(weights, tmp_path, capsys):
    base, adapter = weights
    published = Path(__file__).resolve().parents[2] / "test_data" / "ebb_published"
    out = tmp_path / "pub"
    assert inference_hf.main(["--test_data_dir", str(published), "--output_dir", str(out), "--data_id", "scene00",
                              "--K", "20", "--protocol", "published", "--focus_protocol", "published",
                              "--pisa_segments", "3", "--pisa_supersamples", "1", *_fast(base, adapter)]) == 0
    printed = capsys.readouterr().out
    assert "-> published (gamma 1" in printed and "'n_segments': 3, 'n_supersamples': 1" in printed
    from data.published import load_published_ebb, published_focus_planes

    _, disp, focus = load_published_ebb(published / "input" / "scene00.png", published / "depth" / "scene00_pred.npy",
                                        published / "mask" / "scene00.png")
    names = sorted(p.name for p in out.glob("scene00_K20_*.png"))
    assert names == sorted(f"scene00_K20_f{f:.2f}.png" for f in published_focus_planes(disp, focus))
    config = json.loads((out / "run_config.json").read_text())
    assert config["protocol"] == "published" and config["protocol_resolved"] == "published"
    for bad in (["--pisa_supersamples", "0"], ["--pisa_segments", "-1"], ["--protocol", "paper"],
                ["--focus_protocol", "published", "--focus_disparity", "0.5"]):
        with pytest.raises(SystemExit) as exit_info:
            inference_hf.main(["--test_data_dir", str(published), *bad, *_fast(base, adapter)])
        assert exit_info.value.code == 2


def test_adapter_none_says_no_adapter_and_renders_the_base_unet(weights, tmp_path, capsys):
    """``--adapter none`` (the published protocol offline on the tiny stack, README): the load line says there
    is no adapter, instead of naming an adapter 'None' whose weights were "all verified"."""
    base, _ = weights
    with pytest.warns(UserWarning, match="no adapter given"):
        code = inference_hf.main(["--test_data_dir", str(EBB), "--data_id", "scene00", "--output_dir",
                                  str(tmp_path / "out"), "--protocol", "published", *_fast(base, "none")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "no adapter (base UNet: the renders are not bokeh)" in printed
    assert "adapter 'None'" not in printed and "all verified" not in printed
    assert len(list((tmp_path / "out").glob("scene00_K20_f*.png"))) == 1


@pytest.mark.parametrize("tiles", [[], ["--tile_mode", "tiled", "--tile_size", "64", "--tile_overlap", "16",
                                         "--tile_batch_size", "3"]])
def test_batch_size_renders_the_same_files_within_rounding(weights, tmp_path, tiles):
    """--batch_size 4 puts one input's 2 K x 2 focus renders through one UNet call: the same files as one by
    one, each within one 8-bit level (batched float32 renders differ by <= 5e-4; docs/conventions.md)."""
    base, adapter = weights
    renders = {}
    for batch in ("1", "4"):
        out = tmp_path / f"b{batch}"
        assert inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(out), "--data_id", "scene01",
                                  "--K", "30", "60", "--focus_disparity", "0.1", "0.9", "--batch_size", batch,
                                  "--protocol", "corrected", *tiles, *_fast(base, adapter)]) == 0
        renders[batch] = {p.name: read_image(p) for p in sorted(out.glob("*.png"))}
        assert json.loads((out / "run_config.json").read_text())["batch_size"] == int(batch)
    assert list(renders["1"]) == list(renders["4"]) == [
        f"scene01_K{K}_f{f}.png" for K in (30, 60) for f in ("0.10", "0.90")]
    for name, one in renders["1"].items():
        assert np.abs(one - renders["4"][name]).max() <= 1 / 255 + 1e-6, name
    # Each render got its own K and focus: any two of the four differ by far more than the batching tolerance, so
    # a batch that swapped or shared parameters would fail above. (Corrected protocol: CoC radii in pixels of this
    # 64-px frame. At K 10 the two focus planes differ by one 8-bit level on some CPUs, too little to tell apart.)
    names = list(renders["1"])
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(renders["1"][a] - renders["1"][b]).max() > 0.1, (a, b)
