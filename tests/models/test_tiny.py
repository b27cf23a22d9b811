"""The tiny SDXL stack: seeded, SDXL-shaped, saved in diffusers format and reloaded offline."""

import pytest
import torch

from models.tiny import build_tiny_sdxl, save_tiny_sdxl


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl"), seed=0)


def _unet_inputs(batch=1, latent=16):
    g = torch.Generator().manual_seed(1)
    return dict(
        sample=torch.randn(batch, 4, latent, latent, generator=g),
        timestep=499,
        encoder_hidden_states=torch.randn(batch, 77, 64, generator=g),
        added_cond_kwargs=dict(text_embeds=torch.randn(batch, 32, generator=g), time_ids=torch.randn(batch, 6, generator=g)),
    )


def test_layout_and_sdxl_geometry(tiny_dir):
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (tiny_dir / sub).is_dir(), sub
    assert (tiny_dir / "model_index.json").is_file()
    assert (tiny_dir / "tokenizer" / "vocab.json").is_file() and (tiny_dir / "tokenizer" / "merges.txt").is_file()

    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_dir, subfolder="unet")
    assert unet.config.down_block_types == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert unet.config.up_block_types == ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    assert unet.config.addition_embed_type == "text_time"
    vae = AutoencoderKL.from_pretrained(tiny_dir, subfolder="vae")
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8

    # down_blocks.1.attentions.0 must see 1/16 of the image resolution (as in SDXL): hook its input.
    seen = {}
    block = unet.down_blocks[1].attentions[0]

    def record(module, args, output):
        seen["hw"] = tuple(args[0].shape[-2:])  # returns None: the hook must not replace the output

    handle = block.register_forward_hook(record)
    image_px = 128
    with torch.no_grad():
        unet(**_unet_inputs(latent=image_px // 8))
    handle.remove()
    assert tuple(seen["hw"]) == (image_px // 16, image_px // 16)


def test_pipeline_reloads_offline_and_runs(tiny_dir):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_dir)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    cfg = pipe.scheduler.config
    assert (cfg.beta_schedule, cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps, cfg.prediction_type) == (
        "scaled_linear", 0.00085, 0.012, 1000, "epsilon")
    ids = pipe.tokenizer("an excellent photo with a large aperture").input_ids
    unk = pipe.tokenizer.convert_tokens_to_ids(pipe.tokenizer.unk_token)
    assert unk not in ids[1:-1], "the fixed prompt must tokenise without unknown tokens"
    out = pipe("an excellent photo with a large aperture", num_inference_steps=2, height=64, width=64,
               output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


def test_reloaded_weights_equal_built_and_deterministic(tiny_dir):
    from diffusers import UNet2DConditionModel

    a, b = build_tiny_sdxl(seed=0), build_tiny_sdxl(seed=0)
    c = build_tiny_sdxl(seed=1)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        sa, sb, sc = a[name].state_dict(), b[name].state_dict(), c[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert any(not torch.equal(sa[k], sc[k]) for k in sa), name
    reloaded = UNet2DConditionModel.from_pretrained(tiny_dir, subfolder="unet")
    inputs = _unet_inputs()
    with torch.no_grad():
        assert torch.equal(a["unet"](**inputs).sample, reloaded(**inputs).sample)


def test_forward_backward_at_128px():
    unet = build_tiny_sdxl(seed=0)["unet"].train()
    out = unet(**_unet_inputs(batch=2, latent=16)).sample
    out.square().mean().backward()
    grads = [p.grad for p in unet.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads)
