"""BokehDiffPipeline as a diffusers pipeline (issue 19): save_pretrained / from_pretrained round trip, PIL / numpy /
tensor / list inputs and the output object, generator=, precision rule, CPU offload, early keyword checks."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import models.pipeline_load
from data.focus import focus_from_pixel
from models.pipeline import BokehDiffPipeline, BokehDiffPipelineOutput
from models.lora import save_lora
from models.pipeline_io import seed_from_generator
from models.tiny import build_tiny_sdxl, save_tiny_sdxl
from tests.tiny_weights import trained_tiny_stack, write_published_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

_FAST_PISA = dict(n_segments=3, n_supersamples=2)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl"), seed=0)


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory):
    return write_published_adapter(trained_tiny_stack(), tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="module")
def pipe():
    return BokehDiffPipeline.from_components(**build_tiny_sdxl(seed=0), pisa=_FAST_PISA)


def _inputs(h=64, w=96, seed=0):
    """A uint8 HWC image, the same image as a (1, 3, H, W) tensor, and a float (H, W) disparity."""
    g = torch.Generator().manual_seed(seed)
    image_u8 = (torch.rand(h, w, 3, generator=g) * 255).round().to(torch.uint8).numpy()
    disparity = torch.rand(h, w, generator=g).numpy()
    tensor = (torch.from_numpy(image_u8).permute(2, 0, 1)[None].float() / 255).contiguous()
    return image_u8, tensor, disparity


@pytest.mark.parametrize("protocol", ["published", "corrected"])
def test_save_pretrained_round_trip_is_bit_identical_offline(tiny_dir, adapter_root, tmp_path, monkeypatch, protocol):
    original = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=adapter_root, pisa=_FAST_PISA, protocol=protocol,
                                                 seed=3, tile_size=64, tile_overlap=16)
    _, image, disparity = _inputs()
    disparity = torch.from_numpy(disparity)[None, None]
    full = original(image, disparity, K=20, disp_focus=0.5, mode="full")
    tiled = original(image, disparity, K=20, disp_focus=0.5, mode="tiled")
    original.save_pretrained(tmp_path / "saved")

    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "BokehDiffPipeline" and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["protocol"] == protocol and index["seed"] == 3 and index["tile_size"] == 64
    assert index["pisa"]["n_segments"] == 3 and index["gamma"] == original.model.gamma
    # The UNet is stored without the LoRA, the LoRA beside it (not fused: fusing rounds differently).
    unet_keys = load_file(str(tmp_path / "saved" / "unet" / "diffusion_pytorch_model.safetensors")).keys()
    assert not [k for k in unet_keys if "lora" in k or "base_layer" in k]
    assert (tmp_path / "saved" / "pytorch_lora_weights.safetensors").is_file()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = BokehDiffPipeline.from_pretrained(tmp_path / "saved")
    assert loaded.protocol == protocol and loaded.seed == 3 and loaded.pisa_settings == original.pisa_settings
    assert loaded.model.x0_clip == original.model.x0_clip and loaded.info["lora"]["tensors"] > 0
    assert torch.equal(loaded(image, disparity, K=20, disp_focus=0.5, mode="full"), full)
    assert torch.equal(loaded(image, disparity, K=20, disp_focus=0.5, mode="tiled"), tiled)
    with pytest.raises(ValueError, match="adapter="):
        BokehDiffPipeline.from_pretrained(tmp_path / "saved", adapter=adapter_root)


def test_a_saved_adapter_keeps_its_own_description(tiny_dir, adapter_root, tmp_path):
    """An adapter our training wrote stays one after save_pretrained: the saved LoRA, loaded as an adapter with
    protocol auto, still picks the corrected protocol and discretisation."""
    stack = trained_tiny_stack()
    save_lora(stack["unet"], tmp_path / "ours", extra_metadata={"format": "bokehdiff-train", "pisa": {"enabled": True},
                                                                "model_gamma": 2.2})
    ours = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=tmp_path / "ours" / "pytorch_lora_weights.safetensors",
                                             vae_weights=adapter_root / "small" / "vae.ckpt", pisa=_FAST_PISA)
    assert ours.protocol == "corrected" and ours.info["pisa_compat"] is False
    ours.save_pretrained(tmp_path / "saved")
    with pytest.warns(UserWarning, match="no vae.ckpt"):  # the saved VAE is whole, in saved/vae/
        again = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=tmp_path / "saved", require_vae_weights=False,
                                                  pisa=_FAST_PISA)
    assert again.protocol == "corrected" and again.info["lora"]["format"] == "bokehdiff-train"
    assert again.info["lora"]["model_gamma"] == 2.2 and again.info["lora"]["alpha"] == ours.info["lora"]["alpha"]


def test_unknown_keyword_is_refused_before_any_weight_is_read(monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("weights were read before the keyword check")

    monkeypatch.setattr(models.pipeline_load, "load_base", no_reading)
    monkeypatch.setattr(models.pipeline_load, "adapter_files", no_reading)
    with pytest.raises(TypeError, match="torch_dtpye"):
        BokehDiffPipeline.from_pretrained("nobody/base", adapter="nobody/adapter", torch_dtpye=torch.bfloat16)
    with pytest.raises(ValueError, match="disagree"):
        BokehDiffPipeline.from_pretrained("nobody/base", dtype="fp32", torch_dtype=torch.bfloat16)


def test_pil_numpy_tensor_inputs_and_output_types(pipe):
    image_u8, tensor, disparity = _inputs()
    reference = pipe(tensor, torch.from_numpy(disparity), K=20, disp_focus=0.5)  # the original form: a tensor back
    assert isinstance(reference, torch.Tensor) and reference.shape == (1, 3, 64, 96)

    out = pipe(image_u8, disparity, K=20, disp_focus=0.5, output_type="pt")
    assert isinstance(out, BokehDiffPipelineOutput) and torch.equal(out.images, reference)
    assert out.plans[0].mode == "full" and out.plans[0].timings["total_s"] > 0 and out.focus_disparity == [0.5]

    pil = pipe(Image.fromarray(image_u8), Image.fromarray(disparity.astype(np.float32), mode="F"), K=20,
               focus_disparity=0.5)  # defaults: PIL out, an output object
    assert isinstance(pil.images[0], Image.Image) and pil.images[0].size == (96, 64)
    expected = np.round(reference[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(pil.images[0]), expected)

    array = pipe(tensor, disparity, K=20, disp_focus=0.5, output_type="np").images
    assert array.shape == (1, 64, 96, 3) and array.dtype == np.float32
    np.testing.assert_array_equal(array[0], reference[0].permute(1, 2, 0).numpy())

    images, plans, focus = pipe(image_u8, disparity, K=20, disp_focus=0.5, output_type="pt", return_dict=False)
    assert torch.equal(images, reference) and len(plans) == 1 and focus == [0.5]
    with pytest.raises(ValueError, match="output_type"):
        pipe(image_u8, disparity, K=20, disp_focus=0.5, output_type="latent")
    with pytest.raises(ValueError, match="one of disp_focus"):
        pipe(image_u8, disparity, K=20, disp_focus=0.5, focus_xy=(3, 4))


def test_list_inputs_each_with_its_own_size_K_and_focus(pipe):
    a_u8, a, a_disp = _inputs(64, 96, seed=1)
    b_u8, b, b_disp = _inputs(40, 72, seed=2)
    pipe.set_progress_bar_config(disable=True)
    out = pipe([Image.fromarray(a_u8), b_u8], [a_disp, b_disp], K=[20, 8], focus_xy=[(10, 20), (70, 39)],
               output_type="pt")
    assert isinstance(out.images, list) and [tuple(t.shape) for t in out.images] == [(1, 3, 64, 96), (1, 3, 40, 72)]
    focus = [focus_from_pixel(a_disp, 10, 20), focus_from_pixel(b_disp, 70, 39)]
    assert out.focus_disparity == focus and len(out.plans) == 2
    assert torch.equal(out.images[0], pipe(a, torch.from_numpy(a_disp), K=20, disp_focus=focus[0]))
    assert torch.equal(out.images[1], pipe(b, torch.from_numpy(b_disp), K=8, disp_focus=focus[1]))
    shared = pipe([a_u8, a_u8], [a_disp, a_disp], K=20, focus_xy=(10, 20), output_type="np")  # one focus for both
    assert shared.images.shape == (2, 64, 96, 3) and shared.focus_disparity == [focus[0]] * 2
    with pytest.raises(ValueError, match="same length"):
        pipe([a_u8, b_u8], [a_disp], K=20, disp_focus=0.5)
    with pytest.raises(ValueError, match="2 images"):
        pipe([a_u8, b_u8], [a_disp, b_disp], K=[20, 8, 3], disp_focus=0.5)


def test_generator_seeds_pisa_without_touching_the_global_rng(pipe):
    _, image, disparity = _inputs()
    disparity = torch.from_numpy(disparity)
    state = torch.get_rng_state()
    first = pipe(image, disparity, K=30, disp_focus=0.3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, pipe(image, disparity, K=30, disp_focus=0.3, generator=torch.Generator().manual_seed(5)))
    drawn = seed_from_generator(torch.Generator().manual_seed(5))
    assert torch.equal(first, pipe(image, disparity, K=30, disp_focus=0.3, seed=drawn))
    assert not torch.equal(first, pipe(image, disparity, K=30, disp_focus=0.3, generator=torch.Generator().manual_seed(6)))
    with pytest.raises(ValueError, match="not both"):
        pipe(image, disparity, K=30, disp_focus=0.3, seed=1, generator=torch.Generator())


def test_torch_dtype_and_to_dtype_keep_the_vae_as_its_config_says(tiny_dir, adapter_root):
    loaded = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=adapter_root, pisa=_FAST_PISA, torch_dtype=torch.bfloat16)
    assert loaded.model.unet.dtype == torch.bfloat16
    assert loaded.model.vae.dtype == torch.bfloat16  # the tiny VAE's config says force_upcast=False
    stack = build_tiny_sdxl(seed=0)
    stack["vae"].register_to_config(force_upcast=True)  # as SDXL's VAE: it overflows in fp16
    upcast = BokehDiffPipeline.from_components(**stack, pisa=False).to(torch.bfloat16)
    assert upcast.model.unet.dtype == torch.bfloat16 and upcast.model.vae.dtype == torch.float32
    upcast.to("cpu", torch.float32)
    assert upcast.model.unet.dtype == torch.float32
    _, image, disparity = _inputs()
    assert upcast.to(dtype="bf16")(image, torch.from_numpy(disparity), K=5, disp_focus=0.5).dtype == torch.float32


def test_cpu_offload_runs_on_cpu_and_renders_the_same(caplog):
    stack = build_tiny_sdxl(seed=0)
    reference_pipe = BokehDiffPipeline.from_components(**stack, pisa=_FAST_PISA)
    _, image, disparity = _inputs()
    disparity = torch.from_numpy(disparity)
    reference = reference_pipe(image, disparity, K=20, disp_focus=0.5)
    with caplog.at_level(logging.INFO, logger="models.pipeline"):
        reference_pipe.enable_model_cpu_offload(device="cpu")
    assert "stay on the CPU" in caplog.text and reference_pipe.device.type == "cpu"
    assert torch.equal(reference_pipe(image, disparity, K=20, disp_focus=0.5), reference)
    reference_pipe.enable_model_cpu_offload()  # no device given: the accelerator if there is one, else the CPU
    accelerated = torch.accelerator.is_available()
    assert reference_pipe.device.type == (torch.accelerator.current_accelerator().type if accelerated else "cpu")
    assert torch.allclose(reference_pipe(image, disparity, K=20, disp_focus=0.5).cpu(), reference, atol=1e-3)
    assert next(reference_pipe.model.unet.parameters()).device.type == "cpu"  # offloaded again after the call
    assert set(reference_pipe.components) == {"unet", "vae", "text_encoder", "text_encoder_2", "tokenizer",
                                              "tokenizer_2", "scheduler"}


def test_vae_tiling_switches_and_auto_protocol_log(pipe, tiny_dir, adapter_root, caplog):
    _, image, disparity = _inputs()
    disparity = torch.from_numpy(disparity)
    pipe.enable_vae_tiling()
    pipe(image, disparity, K=5, disp_focus=0.5)
    assert pipe.last_plan.vae_tiling is True
    pipe.disable_vae_tiling()
    pipe(image, disparity, K=5, disp_focus=0.5)
    assert pipe.last_plan.vae_tiling is False
    with caplog.at_level(logging.INFO, logger="models.pipeline"):
        loaded = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=adapter_root, pisa=_FAST_PISA)
    lines = [r.getMessage() for r in caplog.records if r.name == "models.pipeline"]
    assert len(lines) == 1 and lines[0].startswith("protocol auto -> published: the adapter's metadata has no format")
    assert loaded.info["protocol_reason"] == lines[0]


def test_a_built_one_step_model_still_constructs_a_pipeline(pipe):
    """``BokehDiffPipeline(model, ...)`` (benchmarks/gpu_pipeline.py) renders; without text encoders it cannot be saved."""
    _, image, disparity = _inputs()
    disparity = torch.from_numpy(disparity)
    legacy = BokehDiffPipeline(pipe.model, pisa=_FAST_PISA, tile_size=64, tile_overlap=16)
    assert legacy.tile_size == 64 and legacy.config.tile_size == 64 and legacy.model is pipe.model
    assert torch.equal(legacy(image, disparity, K=20, disp_focus=0.5), pipe(image, disparity, K=20, disp_focus=0.5))
    with pytest.raises(ValueError, match="text encoders"):
        legacy.save_pretrained("unused")


@pytest.mark.parametrize("K", [1e30, float("inf"), 1e4])
def test_an_absurd_blur_radius_is_refused_with_the_numbers(pipe, K):
    """Issue 23 item 5: the physical renderers' bound (2 image diagonals, at least 64 px) holds for BokehDiff
    too: K = 1e30 or inf is refused before any network runs, naming the radius and the limit."""
    _, image, disparity = _inputs()
    with pytest.raises(ValueError, match=r"BokehDiffPipeline: the largest blur radius is .* px, more than the limit "
                                         r"of 231 px .*Lower K"):
        pipe(image, disparity, K=K, disp_focus=0.0)
    with pytest.raises(ValueError, match="largest blur radius"):
        pipe.render_variants(image, disparity, K=[20.0, K], disp_focus=0.0)
    assert torch.isfinite(pipe(image, disparity, K=100.0, disp_focus=0.0)).all()  # ordinary K: rendered
