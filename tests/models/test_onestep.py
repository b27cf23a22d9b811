"""The shared one-step forward: x0 formula, prompt and micro-conditioning against diffusers' SDXL pipeline,
PISA kwargs routing, gradients, determinism and input checks."""

import math

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from models.lora import add_lora, set_vae_trainable
from models.onestep import (
    DEFAULT_PROMPT,
    OneStepBokeh,
    encode_prompt,
    gamma_in,
    gamma_out,
    sdxl_time_ids,
)
from models.tiny import build_tiny_sdxl

_KEYS = ("unet", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


@pytest.fixture(scope="module")
def stack():
    return build_tiny_sdxl(seed=0)


@pytest.fixture
def model(stack):
    return OneStepBokeh.from_components(**{k: stack[k] for k in _KEYS})


def _inputs(b=1, h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    aif = torch.rand(b, 3, h, w, generator=g)
    disp = torch.rand(b, 1, h, w, generator=g)
    return aif, disp, 20 * (disp - 0.5)


def test_prompt_embeddings_match_diffusers_sdxl(stack):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**stack)
    ref_embeds, _, ref_pooled, _ = pipe.encode_prompt(DEFAULT_PROMPT, device="cpu", do_classifier_free_guidance=False)
    embeds, pooled = encode_prompt(
        DEFAULT_PROMPT, stack["tokenizer"], stack["tokenizer_2"], stack["text_encoder"], stack["text_encoder_2"]
    )
    torch.testing.assert_close(embeds, ref_embeds.float())
    torch.testing.assert_close(pooled, ref_pooled.float())


def test_time_ids_layout():
    ids = sdxl_time_ids((512, 768), (64, 32), (256, 256), batch=2)
    assert ids.shape == (2, 6)
    assert ids[1].tolist() == [512, 768, 64, 32, 256, 256]
    per_item = sdxl_time_ids(torch.tensor([[10, 20], [30, 40]]), (0, 0), (8, 8), batch=2)
    assert per_item[:, :2].tolist() == [[10, 20], [30, 40]]
    with pytest.raises(ValueError, match="original_size"):
        sdxl_time_ids(torch.zeros(3, 2), (0, 0), (8, 8), batch=2)


def test_x0_formula_epsilon_and_v(model, stack):
    aif, disp, coc = _inputs()
    with torch.no_grad():
        z = model.encode(aif)
        x0 = model.predict_x0(z, disp, coc)
        pred = model.unet(
            z,
            torch.tensor([499]),
            encoder_hidden_states=model.prompt_embeds,
            added_cond_kwargs={"text_embeds": model.pooled_prompt_embeds, "time_ids": torch.tensor([[64.0, 96, 0, 0, 64, 96]])},
        ).sample
    a = float(stack["scheduler"].alphas_cumprod[499])
    torch.testing.assert_close(x0, (z - math.sqrt(1 - a) * pred) / math.sqrt(a), rtol=1e-5, atol=1e-5)

    v_model = OneStepBokeh.from_components(**{k: stack[k] for k in _KEYS}, prediction_type="v_prediction")
    with torch.no_grad():
        x0_v = v_model.predict_x0(z, disp, coc)
    torch.testing.assert_close(x0_v, math.sqrt(a) * z - math.sqrt(1 - a) * pred, rtol=1e-5, atol=1e-5)


def test_encode_is_deterministic_mode(model):
    aif, _, _ = _inputs()
    with torch.no_grad():
        z1, z2 = model.encode(aif), model.encode(aif)
        expected = model.vae.encode(aif**2.2 * 2 - 1).latent_dist.mode() * model.vae.config.scaling_factor
    assert torch.equal(z1, z2)
    torch.testing.assert_close(z1, expected)


def test_forward_shape_and_bit_identical(model):
    aif, disp, coc = _inputs(b=2)
    with torch.no_grad():
        a = model(aif, disp, coc)
        b = model(aif, disp, coc)
    assert a.shape == (2, 3, 64, 96) and torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_gamma_round_trip_and_gradient():
    x = torch.linspace(0.05, 1, 50, requires_grad=True)  # 0.05 ** 2.2 is above the 1e-4 clamp
    y = gamma_out(gamma_in(x, 2.2), 2.2)
    torch.testing.assert_close(y, x)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert gamma_out(torch.tensor([-0.5]), 1.0).item() == -0.5  # gamma 1: no clamp


def test_gamma_out_keeps_black_black_with_a_finite_gradient():
    x = torch.tensor([0.0, 1e-6, 5e-5, 1e-4, 2e-4], requires_grad=True)
    y = gamma_out(x, 2.2)
    assert y[0].item() == 0.0  # no floor: black decodes to black
    assert (y[1:] > y[:-1]).all()  # monotonic through the toe
    torch.testing.assert_close(y[3], torch.tensor(1e-4) ** (1 / 2.2))  # continuous where the toe meets the power
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad > 0).all()  # dark pixels still receive gradient


class _RecordingPISA(AttnProcessor2_0):
    """Stock attention that also names PISA's kwargs, so the UNet routes them here; records what it got."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 disp_coc=None, pisa_hardness=None):
        self.seen.append((disp_coc, pisa_hardness))
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def test_disp_coc_routed_only_to_processors_that_accept_it(stack):
    stack = build_tiny_sdxl(seed=0)  # fresh: processors are changed below
    model = OneStepBokeh.from_components(**{k: stack[k] for k in _KEYS})
    aif, disp, coc = _inputs()
    assert model.unet_kwargs(disp, coc) is None  # stock processors: physics off, nothing passed
    recorder = _RecordingPISA()
    procs = {
        name: (recorder if name.startswith("down_blocks.1.attentions.0") and "attn1" in name else AttnProcessor2_0())
        for name in model.unet.attn_processors
    }
    model.unet.set_attn_processor(procs)
    with torch.no_grad():
        model(aif, disp, coc, pisa_hardness=1e4)
    assert len(recorder.seen) == 1
    disp_coc, hardness = recorder.seen[0]
    assert disp_coc.shape == (1, 2, 64, 96) and disp_coc.dtype == torch.float32
    assert torch.equal(disp_coc[:, :1], disp) and torch.equal(disp_coc[:, 1:], coc)
    assert hardness == 1e4


def test_gradients_reach_lora_and_vae_encoder(stack):
    stack = build_tiny_sdxl(seed=0)
    add_lora(stack["unet"], rank=2)
    vae_params = set_vae_trainable(stack["vae"])
    model = OneStepBokeh.from_components(**{k: stack[k] for k in _KEYS})
    aif, disp, coc = _inputs()
    model(aif, disp, coc, original_size=(128, 128), crop_top_left=(16, 8)).mean().backward()
    # B starts at zero (gaussian init), so the first gradient reaches the B matrices.
    lora_grads = [p.grad for n, p in model.unet.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert sum(bool(g.abs().sum() > 0) for g in lora_grads) > len(lora_grads) // 2
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae_params)
    assert all(p.grad is None for p in model.vae.decoder.parameters())


def test_bad_inputs(model, stack):
    aif, disp, coc = _inputs()
    with pytest.raises(ValueError, match="disparity"):
        model(aif, disp[:, :, :32], coc)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(aif[:, :1], disp, coc)
    with pytest.raises(ValueError, match="multiple of 8"):
        model(aif[..., :60], disp[..., :60], coc[..., :60])
    with pytest.raises(ValueError, match="prediction_type"):
        OneStepBokeh.from_components(**{k: stack[k] for k in _KEYS}, prediction_type="flow")
    with pytest.raises(ValueError, match="timestep"):
        OneStepBokeh.from_components(**{k: stack[k] for k in _KEYS}, timestep=1000)
