"""BokehDiffPipeline on the tiny SDXL stack saved to disk: weights (published adapter format), determinism,
tiled vs full frame, planning, offline errors and bad inputs."""

import warnings

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.lora import WeightLoadingError, save_lora
from models.pipeline import BokehDiffPipeline, WeightsUnavailableError, blend_window, tile_starts
from models.tiny import build_tiny_sdxl, save_tiny_sdxl
from tests.tiny_weights import trained_tiny_stack, write_published_adapter


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl"), seed=0)


@pytest.fixture(scope="module")
def published_adapter(tmp_path_factory):
    """The published layout (unprefixed LoRA at the root, small/vae.ckpt) and the stack it was written from."""
    stack = trained_tiny_stack()
    return write_published_adapter(stack, tmp_path_factory.mktemp("published")), stack


def _inputs(h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g), torch.rand(1, 1, h, w, generator=g)


_FAST_PISA = dict(n_segments=3, n_supersamples=2)


def test_published_adapter_loads_fully_and_matches_in_memory(tiny_dir, published_adapter):
    root, stack = published_adapter
    pipe = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=root, pisa=_FAST_PISA)
    assert pipe.info["lora"]["tensors"] == len(load_file(str(root / "pytorch_lora_weights.safetensors")))
    assert pipe.info["vae"]["file"].endswith("small/vae.ckpt")
    # A published adapter runs under the published protocol (protocol="auto"); the in-memory twin likewise.
    assert pipe.info["protocol"] == "published"
    reference = BokehDiffPipeline.from_components(**stack, pisa=_FAST_PISA, protocol="published")
    image, disp = _inputs()
    out = pipe(image, disp, K=20, disp_focus=0.5)
    assert torch.equal(out, reference(image, disp, K=20, disp_focus=0.5))
    with pytest.warns(UserWarning, match="no adapter"):
        base = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=None, pisa=_FAST_PISA)
    assert not torch.allclose(out, base(image, disp, K=20, disp_focus=0.5), atol=1e-3)


def test_two_runs_bit_identical_and_seed_matters(tiny_dir, published_adapter):
    root, _ = published_adapter
    image, disp = _inputs()
    outs = []
    for _ in range(2):  # two independently loaded pipelines, as two CLI runs
        pipe = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=root, pisa=_FAST_PISA)
        outs.append(pipe(image, disp, K=30, disp_focus=0.3, seed=7))
    assert torch.equal(outs[0], outs[1])
    assert outs[0].shape == (1, 3, 64, 96) and 0 <= outs[0].min() and outs[0].max() <= 1
    other = pipe(image, disp, K=30, disp_focus=0.3, seed=8)  # occlusion jitter comes from the seed
    assert not torch.equal(outs[0], other)


def _pisa_processors(pipe):
    from models.pisa import PISAAttnProcessor

    return {n: p for n, p in pipe.model.unet.attn_processors.items() if isinstance(p, PISAAttnProcessor)}


def test_pisa_is_installed_by_default_and_compat_follows_the_adapter(tiny_dir, published_adapter, tmp_path):
    root, stack = published_adapter
    for pisa in (True, {}):  # an empty override dict still means "PISA with the defaults"
        assert _pisa_processors(BokehDiffPipeline.from_components(**build_tiny_sdxl(seed=0), pisa=pisa))
    assert not _pisa_processors(BokehDiffPipeline.from_components(**build_tiny_sdxl(seed=0), pisa=False))

    published = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=root, pisa={})
    processors = _pisa_processors(published)
    assert set(processors) == {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"}
    # The published adapter was trained with the public code: the published discretisation is used.
    assert published.info["pisa_compat"] is True and all(p.compat for p in processors.values())
    # An adapter written by our training describes itself: the corrected discretisation.
    save_lora(stack["unet"], tmp_path, extra_metadata={"format": "bokehdiff-train", "pisa": {"enabled": True}})
    ours = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=tmp_path / "pytorch_lora_weights.safetensors",
                                             vae_weights=root / "small" / "vae.ckpt")
    assert ours.info["pisa_compat"] is False
    forced = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=root, pisa={"compat": False})
    assert forced.info["pisa_compat"] is False


def test_an_adapter_trained_without_pisa_or_vae_renders_as_it_was_trained(tiny_dir, published_adapter, tmp_path,
                                                                          recwarn):
    """``train_lora_otf.py --no-pisa --opt_vae 0`` (the ablations) writes ``pisa.enabled: false`` and
    ``vae_trainable: []``: by default the pipeline then installs no PISA and needs no VAE file (both were errors
    or silently different: PISA was installed and the render differed from the trained model by up to 234/255).
    Explicit PISA settings still install it, with a warning."""
    _, stack = published_adapter
    save_lora(stack["unet"], tmp_path, extra_metadata={"format": "bokehdiff-train", "pisa": {"enabled": False},
                                                       "vae_trainable": []})
    lora = tmp_path / "pytorch_lora_weights.safetensors"
    for pisa in (True, {}):
        plain = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=lora, pisa=pisa)
        assert not _pisa_processors(plain) and plain.pisa_settings is None
        assert "trained without PISA" in plain.info["pisa_off_reason"] and "vae" not in plain.info
        assert "base VAE encoder" in plain.info["vae_note"]
    assert not [w for w in recwarn if "base weights" in str(w.message)]  # needing no VAE file is not a warning
    image, disp = _inputs()
    off = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=lora, pisa=False)
    assert torch.equal(plain(image, disp, K=30, disp_focus=0.3), off(image, disp, K=30, disp_focus=0.3))
    with pytest.warns(UserWarning, match="trained without PISA"):
        forced = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=lora, pisa={"compat": False})
    assert _pisa_processors(forced) and "pisa_off_reason" not in forced.info
    # An adapter trained with PISA and the VAE (no such metadata, or enabled / non-empty) is unchanged.
    save_lora(stack["unet"], tmp_path / "with", extra_metadata={"format": "bokehdiff-train", "pisa": {"enabled": True},
                                                                "vae_trainable": ["encoder.conv_in."]})
    with pytest.raises(FileNotFoundError, match="vae.ckpt"):
        BokehDiffPipeline.from_pretrained(tiny_dir, adapter=tmp_path / "with" / "pytorch_lora_weights.safetensors")


def test_focus_changes_the_render_and_a_per_call_seed_does_not_stick(published_adapter):
    _, stack = published_adapter
    pipe = BokehDiffPipeline.from_components(**stack, pisa=_FAST_PISA, seed=0)
    image, disp = _inputs()
    first = pipe(image, disp, K=30, disp_focus=0.2)
    assert not torch.equal(first, pipe(image, disp, K=30, disp_focus=0.8))  # PISA sees disparity and CoC
    pipe(image, disp, K=30, disp_focus=0.2, seed=9)
    assert torch.equal(pipe(image, disp, K=30, disp_focus=0.2), first)  # back to the pipeline's seed


def test_foreign_key_adapter_is_an_error(tiny_dir, published_adapter, tmp_path):
    root, _ = published_adapter
    state = load_file(str(root / "pytorch_lora_weights.safetensors"))
    state["text_encoder.encoder.layers.0.mlp.fc1.lora_A.weight"] = torch.zeros(4, 32)
    save_file(state, str(tmp_path / "pytorch_lora_weights.safetensors"))
    with pytest.raises(WeightLoadingError, match="text_encoder.encoder"):
        BokehDiffPipeline.from_pretrained(tiny_dir, adapter=tmp_path, vae_weights=root / "small" / "vae.ckpt")


def test_adapter_without_vae_weights(tiny_dir, published_adapter, tmp_path):
    root, _ = published_adapter
    lora_only = root / "pytorch_lora_weights.safetensors"
    with pytest.raises(FileNotFoundError, match="vae.ckpt"):
        BokehDiffPipeline.from_pretrained(tiny_dir, adapter=lora_only, adapter_variant=None)
    with pytest.warns(UserWarning, match="base weights"):
        BokehDiffPipeline.from_pretrained(tiny_dir, adapter=lora_only, require_vae_weights=False, pisa=False)


def test_offline_hub_ids_give_one_clear_error(tiny_dir):
    with pytest.raises(WeightsUnavailableError) as err:
        BokehDiffPipeline.from_pretrained(tiny_dir, adapter="zcx65535/bokehdiff")
    assert "--renderer classical" in str(err.value) and "local" in str(err.value)
    with pytest.raises(WeightsUnavailableError, match="--renderer classical"):
        BokehDiffPipeline.from_pretrained("nobody-here/no-such-sdxl", adapter=None)
    with pytest.raises(FileNotFoundError, match="unet/"):
        BokehDiffPipeline.from_pretrained(tiny_dir / "vae", adapter=None)


def _identity_like_pipeline():
    """eps = 0 exactly (conv_out zeroed): x0 = z / sqrt(a_t) pointwise; physics off."""
    stack = build_tiny_sdxl(seed=0)
    with torch.no_grad():
        stack["unet"].conv_out.weight.zero_()
        stack["unet"].conv_out.bias.zero_()
    return BokehDiffPipeline.from_components(**stack, pisa=dict(physics=False), tile_size=64, tile_overlap=16)


def test_tiled_matches_full_frame_with_identity_like_unet():
    pipe = _identity_like_pipeline()
    image, disp = _inputs(h=160, w=224, seed=1)
    full = pipe(image, disp, K=20, disp_focus=0.5, mode="full", vae_tiling=False)
    tiled = pipe(image, disp, K=20, disp_focus=0.5, mode="tiled", vae_tiling=False, tile_batch_size=3)
    # latent 20 x 28, tiles of 8 aligned to 4 with overlap >= 2: starts 0, 4, 8, 12 and 0, 4, ..., 20
    assert pipe.last_plan.mode == "tiled" and pipe.last_plan.n_tiles == 4 * 6
    assert (full - tiled).abs().max() < 1e-3


class _TileRecorder:
    """Stock attention that names disp_coc, so the UNet hands it over; records what each self-attention got."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.stock, self.seen = AttnProcessor2_0(), []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, disp_coc=None):
        if encoder_hidden_states is None:
            self.seen.append(disp_coc.clone())
        return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def test_the_largest_tile_overlap_renders_and_one_step_more_is_refused_in_pixels():
    """Tiles advance by at least one 32-px step of the UNet's grid: overlap 32 with 64-px tiles renders (three
    column tiles over 128 px); 40 is refused in image pixels (it was a latent-unit message: 'tile=8 ... got 5')."""
    image, disp = _inputs(h=64, w=128)
    stack = build_tiny_sdxl(seed=0)
    widest = BokehDiffPipeline.from_components(**stack, pisa=False, tile_size=64, tile_overlap=32)
    assert widest(image, disp, K=10, disp_focus=0.5, mode="tiled").shape == (1, 3, 64, 128)
    assert widest.last_plan.n_tiles == 3
    too_wide = BokehDiffPipeline.from_components(**stack, pisa=False, tile_size=64, tile_overlap=40)
    with pytest.raises(ValueError, match=r"tile_overlap must be in \[0, tile_size - 32\] = \[0, 32\] px .* got 40"):
        too_wide(image, disp, K=10, disp_focus=0.5, mode="tiled")


def test_each_tile_gets_its_disp_coc_crop_and_micro_conditioning():
    stack = build_tiny_sdxl(seed=0)
    recorder = _TileRecorder()
    stack["unet"].set_attn_processor(recorder)
    time_ids = []
    stack["unet"].register_forward_pre_hook(
        lambda module, args, kwargs: time_ids.append(kwargs["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True)
    pipe = BokehDiffPipeline.from_components(**stack, pisa=False, tile_size=64, tile_overlap=16)
    image, disp = _inputs(h=96, w=128)
    K, focus = 10.0, 0.5
    pipe(image, disp, K=K, disp_focus=focus, mode="tiled", tile_batch_size=2)
    n_self_attn = sum(1 for k in stack["unet"].attn_processors if "attn1" in k)
    assert pipe.last_plan.n_tiles == 2 * 3
    assert len(recorder.seen) == 3 * n_self_attn  # 6 tiles in UNet batches of 2

    # SDXL micro-conditioning per tile: (original H, W, crop top, crop left, target H, W), as in training.
    rows = torch.cat(time_ids)
    offsets = [(int(r[2]), int(r[3])) for r in rows]
    assert sorted(offsets) == [(y, x) for y in (0, 32) for x in (0, 32, 64)]
    assert (rows[:, :2] == torch.tensor([96.0, 128.0])).all() and (rows[:, 4:] == 64.0).all()
    # Each tile's disp_coc is exactly the image-resolution crop at that tile's offset.
    full = torch.cat([disp, K * (disp - focus)], dim=1)
    batches = recorder.seen[::n_self_attn]
    for batch, (first, second) in zip(batches, zip(offsets[::2], offsets[1::2])):
        for tile, (y, x) in zip(batch, (first, second)):
            torch.testing.assert_close(tile, full[0, :, y:y + 64, x:x + 64])


def test_tile_geometry():
    starts = tile_starts(40, 16, 4, align=4)
    assert starts == [0, 12, 24]  # span 24 in aligned strides of at most 16 - 4 = 12
    assert tile_starts(44, 16, 4, align=4) == [0, 12, 20, 28]  # uneven span: strides 12, 8, 8 (overlap >= 4)
    total = torch.zeros(40, dtype=torch.float64)
    for i, s in enumerate(starts):
        total[s:s + 16] += blend_window(starts, 16, i)
    torch.testing.assert_close(total, torch.ones(40, dtype=torch.float64))  # partition of unity
    assert tile_starts(10, 16, 4) == [0]
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(40, 16, 14, align=4)


def test_plan_auto_and_odd_sizes():
    pipe = _identity_like_pipeline()
    assert pipe.plan(200, 300).mode == "full"
    pipe.full_frame_max_px = 128 * 128
    plan = pipe.plan(200, 300)
    assert plan.mode == "tiled" and plan.padded_hw == (224, 320) and "auto" in plan.reason
    image, disp = _inputs(h=70, w=101)
    assert pipe(image[0], disp[0, 0], K=5, disp_focus=0.2).shape == (1, 3, 70, 101)  # (3,H,W) and (H,W) accepted


def test_bf16_unet_runs_close_to_fp32(published_adapter):
    _, stack = published_adapter
    pipe = BokehDiffPipeline.from_components(**stack, pisa=_FAST_PISA)
    image, disp = _inputs()
    ref = pipe(image, disp, K=20, disp_focus=0.5)
    out = pipe.to(dtype="bf16")(image, disp, K=20, disp_focus=0.5)
    pipe.to(dtype="fp32")
    assert out.dtype == torch.float32 and (out - ref).abs().mean() < 0.05


def test_bad_inputs():
    pipe = _identity_like_pipeline()
    image, disp = _inputs()
    with pytest.raises(ValueError, match="must match the image"):
        pipe(image, disp[..., :32], K=5, disp_focus=0.5)
    with pytest.raises(ValueError, match="K .*disp_focus"):
        pipe(image, disp)
    with pytest.raises(ValueError, match="disp_focus must be in"):
        pipe(image, disp, K=5, disp_focus=1.5)
    raw = disp * 1.6 / disp.max()  # a raw 1 / depth map (published BLB) admits a focus up to its maximum
    assert pipe(image, raw, K=5, disp_focus=1.5).shape == image.shape
    with pytest.raises(ValueError, match="disp_focus must be in"):
        pipe(image, raw, K=5, disp_focus=1.7)
    bad = disp.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pipe(image, bad, K=5, disp_focus=0.5)
    with pytest.raises(ValueError, match="mode"):
        pipe(image, disp, K=5, disp_focus=0.5, mode="fast")
    with pytest.raises(TypeError, match="float"):
        pipe((image * 255).to(torch.uint8), disp, K=5, disp_focus=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # coc_px given directly: no warning, same result as K/focus
        a = pipe(image, disp, coc_px=5 * (disp - 0.5))
    torch.testing.assert_close(a, pipe(image, disp, K=5, disp_focus=0.5))


def test_loading_in_float32_prints_no_cast_warning(tiny_dir, published_adapter):
    """diffusers warns "modules ... should be kept in float32: []" on every ``to(dtype)``, even an empty list;
    the pipeline casts only when the dtype changes, so the float32 load and ``to(device, dtype)`` are quiet."""
    import logging

    from diffusers.utils import logging as diffusers_logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(level=logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    handler = Collect()
    diffusers_logging.add_handler(handler)  # diffusers' own handler writes to the stream it captured at import
    try:
        root, _ = published_adapter
        pipe = BokehDiffPipeline.from_pretrained(tiny_dir, adapter=root, pisa=_FAST_PISA).to("cpu", dtype="no")
        assert not [m for m in handler.messages if "should be kept in float32" in m]
        pipe.to(dtype="bf16")  # a real cast still happens (diffusers may warn then)
        assert pipe.model.unet.dtype == torch.bfloat16
    finally:
        diffusers_logging.remove_handler(handler)


def test_memory_estimate_counts_sparse_pisa_linearly():
    """The UNet estimate includes PISA's sparse working set, which grows with the tokens, not their square:
    4x the pixels cost about 4x, so mode="auto" keeps full frame wherever activations fit."""
    stack = build_tiny_sdxl(seed=0)
    with_pisa = BokehDiffPipeline.from_components(**stack)
    without = BokehDiffPipeline.from_components(**stack, pisa=False)
    small, big = with_pisa.estimate_bytes(1024, 1024)[0], with_pisa.estimate_bytes(4096, 4096)[0]
    assert small > without.estimate_bytes(1024, 1024)[0]
    assert big < 20 * small  # 16x the pixels; a dense N x N term would be 256x


def test_full_frame_render_takes_the_sparse_pisa_path_and_matches_chunked():
    """impl="auto" (the default) picks the sparse path for an inference render whose CoC is small against the
    frame, and the render equals forcing impl="chunked": the PISA layer's output and the UNet's x0 to 1e-5.
    (The decoded image differs by ~1e-4 -- measured 1.0e-4 here, 4e-4 at 1024 px -- because the tiny stack's
    random VAE decoder turns 1e-6 of latent noise into ~2e-4 of image noise: the decoder's gain on float
    rounding, not a PISA difference.)"""
    from models.pisa import PISAAttnProcessor

    size = 512  # 32 x 32 PISA tokens; CoC radius <= 10 px: the bound skips most of the N^2 pairs
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=g)
    disp = torch.linspace(0.3, 0.7, size).expand(1, 1, size, size).clone()
    disp[..., 128:256, 128:256] = 0.9  # a near square: occlusion and a depth edge
    renders, x0, pisa_out, counts = {}, {}, {}, {}
    for impl in ("auto", "chunked"):
        pipe = BokehDiffPipeline.from_components(**build_tiny_sdxl(seed=0), pisa=dict(_FAST_PISA, impl=impl))
        modules = dict(pipe.model.unet.named_modules())
        scale = pipe.model.vae.config.scaling_factor  # the decoder reads x0 / scale + shift; the shift cancels
        hooks = [
            modules["down_blocks.1.attentions.0.transformer_blocks.0.attn1"].register_forward_hook(
                lambda module, args, out, impl=impl: pisa_out.__setitem__(impl, out.detach().clone())),
            pipe.model.vae.decoder.register_forward_pre_hook(
                lambda module, args, impl=impl: x0.__setitem__(impl, args[0].detach() * scale)),
        ]
        renders[impl] = pipe(image, disp, K=20, disp_focus=0.5)
        for hook in hooks:
            hook.remove()
        assert pipe.last_plan.mode == "full"
        processors = {id(p): p for p in _pisa_processors(pipe).values()}
        (processor,) = processors.values()  # one processor instance serves every PISA layer
        assert isinstance(processor, PISAAttnProcessor) and processor.impl == impl
        counts[impl] = dict(processor.impl_counts)
        assert processor.last_impl == {"auto": "sparse", "chunked": "chunked"}[impl]
    assert counts == {"auto": {"sparse": 1}, "chunked": {"chunked": 1}}  # the tiny UNet has one PISA layer
    assert (pisa_out["auto"] - pisa_out["chunked"]).abs().max() <= 1e-5
    assert (x0["auto"] - x0["chunked"]).abs().max() <= 1e-5
    assert (renders["auto"] - renders["chunked"]).abs().max() <= 1e-3


def test_cpu_memory_counts_the_page_cache_the_kernel_can_drop():
    """The planner's CPU budget is Linux's MemAvailable (free + reclaimable cache), never below the free pages:
    after reading 10 GB of weights most memory is page cache, and MemFree alone would tile every render."""
    import os

    from models.tiling import available_bytes

    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    mem_available = int(meminfo["MemAvailable"].split()[0]) * 1024
    available = available_bytes(torch.device("cpu"))
    assert abs(available - mem_available) < 0.02 * total  # (read a moment apart)
    assert int(meminfo["MemFree"].split()[0]) * 1024 <= available + 0.02 * total <= 1.02 * total
