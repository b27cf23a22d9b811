"""The one-step BokehDiff forward, shared by inference (:mod:`models.pipeline`) and training.

BokehDiff (Zhu et al., "Neural Lens Blur with One-Step Diffusion", ICCV 2025, Sec. 3.3) renders lens blur in
a single UNet evaluation, *without adding noise*: the all-in-focus latent (the VAE posterior's mode, so
encoding is deterministic) is fed to the UNet as if it were the noisy latent at a fixed timestep ``t`` (499),
and the UNet's prediction is turned into a clean latent with the DDPM relation (Ho et al. 2020, Eq. 4 solved
for x0). The equation is written in docs/conventions.md ("The one-step model"); here ``x0`` is also clamped to
``+-clip_sample_range`` when ``x0_clip`` is set (``DDPMScheduler.step``'s clip_sample).

``gamma_in`` / ``gamma_out`` are the colour transfer of :mod:`kernels.colour` (gamma = 1 disables). v-prediction
(``x0 = sqrt(a_t) z - sqrt(1 - a_t) v``) and sample prediction are handled too; any other prediction type
of the scheduler raises an error.

The prompt is fixed, so its embeddings are computed once from the two SDXL text encoders and cached as
buffers; the text encoders can then be dropped. SDXL's micro-conditioning ("add_time_ids" = original size,
crop top-left, target size, all in image pixels as ``(h, w)`` pairs; Podell et al. 2023, Sec. 2.2) is built
the same way here for training crops and inference tiles: ``original_size`` is the size of the full image the
crop/tile comes from, ``crop_top_left`` the crop's offset in it, and ``target_size`` the crop's own size.

Units and shapes (see docs/conventions.md):
- ``aif_srgb``: ``(B, 3, H, W)`` sRGB in [0, 1]; ``H`` and ``W`` multiples of the VAE factor (8 for SDXL).
- ``disparity``: ``(B, 1, H, W)`` in [0, 1], 1 = nearest.
- ``coc_px``: ``(B, 1, H, W)`` signed circle-of-confusion radius in pixels of this image,
  ``K * (disparity - disp_focus)``.
- Latents: ``(B, 4, H / 8, W / 8)``, already multiplied by the VAE's scaling factor.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

# The model's colour transfer lives at the bottom of the stack; re-exported here (public names of this module).
from kernels.colour import DEFAULT_GAMMA, gamma_in, gamma_out

__all__ = [
    "DEFAULT_PROMPT",
    "DEFAULT_TIMESTEP",
    "DEFAULT_GAMMA",
    "OneStepBokeh",
    "encode_prompt",
    "sdxl_time_ids",
    "gamma_in",
    "gamma_out",
    "pisa_kwarg_names",
    "ddpm_x0_clip",
]

DEFAULT_PROMPT = "an excellent photo with a large aperture"
DEFAULT_TIMESTEP = 499


# ----------------------------------------------------------------------------------------------------------
# Small pieces (public: training uses them)
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_prompt(
    prompt: str,
    tokenizer,
    tokenizer_2,
    text_encoder: nn.Module,
    text_encoder_2: nn.Module,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL text conditioning for one prompt.

    Returns:
        ``prompt_embeds`` ``(1, 77, D1 + D2)``: the penultimate hidden states of both CLIP encoders,
        concatenated on the feature axis (SDXL: 768 + 1280 = 2048), and ``pooled`` ``(1, P)``: encoder 2's
        projected pooled output (SDXL: 1280). Both float32, on the text encoders' device.
    """
    hidden = []
    pooled = None
    for tok, enc in ((tokenizer, text_encoder), (tokenizer_2, text_encoder_2)):
        device = next(enc.parameters()).device
        ids = tok(
            prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        out = enc(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2].float())
        if enc is text_encoder_2:
            pooled = out.text_embeds.float() if hasattr(out, "text_embeds") else out[0].float()
    return torch.cat(hidden, dim=-1), pooled


def _as_size(value, batch: int, name: str) -> torch.Tensor:
    """``(h, w)`` tuple or ``(B, 2)`` / ``(2,)`` tensor -> ``(B, 2)`` float32 tensor on CPU."""
    t = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    if t.ndim == 1:
        t = t.expand(batch, -1)
    if t.shape != (batch, 2):
        raise ValueError(f"{name} must be (h, w) or a (B={batch}, 2) tensor of pixels, got shape {tuple(t.shape)}.")
    return t


def sdxl_time_ids(original_size, crop_top_left, target_size, batch: int) -> torch.Tensor:
    """SDXL micro-conditioning ``add_time_ids``: ``(B, 6)`` float32 = original (h, w), crop top-left (y, x),
    target (h, w), all in image pixels. Each argument is ``(h, w)`` or a ``(B, 2)`` tensor."""
    return torch.cat(
        [
            _as_size(original_size, batch, "original_size"),
            _as_size(crop_top_left, batch, "crop_top_left"),
            _as_size(target_size, batch, "target_size"),
        ],
        dim=1,
    )


def ddpm_x0_clip(scheduler) -> float | None:
    """The x0 clamp ``DDPMScheduler.step`` applies for this base model's scheduler config: its
    ``clip_sample_range`` when ``clip_sample`` is true *or absent* (diffusers' DDPM default is true), else
    ``None``. The published inference builds ``DDPMScheduler.from_pretrained(base, subfolder="scheduler")``
    whatever class the config names, so the config decides (SDXL's own config says ``clip_sample: false``).

    Raises:
        ValueError: the config asks for dynamic thresholding, which the one-step path does not implement.
    """
    from diffusers import DDPMScheduler

    config = DDPMScheduler.from_config(scheduler.config).config
    if config.thresholding:
        raise ValueError(
            "the base model's scheduler config sets thresholding=true (dynamic thresholding), which the published "
            "protocol's one-step path does not implement; use --protocol corrected or a config without it."
        )
    return float(config.clip_sample_range) if config.clip_sample else None


def pisa_kwarg_names(unet: nn.Module) -> set[str]:
    """The ``cross_attention_kwargs`` names that at least one attention processor of ``unet`` accepts by name.

    diffusers' ``Attention`` drops (and warns about) keyword arguments a processor's ``__call__`` does not
    name, so ``disp_coc`` is only meaningful when a PISA processor is installed. Stock processors contribute
    nothing (their ``*args, **kwargs`` do not receive extra keys).
    """
    names: set[str] = set()
    for processor in unet.attn_processors.values():
        params = inspect.signature(processor.__call__).parameters
        names.update(n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return names & {"disp_coc", "pisa_hardness", "generator", "pisa_generator", "seed"}


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------
class OneStepBokeh(nn.Module):
    """UNet + VAE + cached prompt embeddings: AIF image, disparity and CoC -> rendered bokeh in one step.

    Build it with :meth:`from_components` (computes the prompt embeddings from the text encoders, which the
    caller may then drop). The module takes device and dtype from its UNet/VAE: move it with ``.to(...)``;
    the UNet may be in bf16/fp16 while the VAE stays in float32 (the SDXL VAE overflows in fp16).

    Attributes:
        unet, vae: diffusers ``UNet2DConditionModel`` (``addition_embed_type="text_time"``) and ``AutoencoderKL``.
        timestep: the fixed timestep t (paper: 499).
        gamma: display gamma; inputs are linearised with it and outputs re-encoded (1 disables).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"`` (from the scheduler).
        x0_clip: if set, ``x0`` is clamped to ``[-x0_clip, x0_clip]`` (scaled-latent units), as
            ``DDPMScheduler.step`` does when its config has ``clip_sample`` true (or lacks the key: diffusers'
            default is true); see :func:`ddpm_x0_clip`.
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        prompt_embeds: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        *,
        timestep: int = DEFAULT_TIMESTEP,
        gamma: float = DEFAULT_GAMMA,
        prediction_type: str = "epsilon",
        x0_clip: float | None = None,
    ):
        super().__init__()
        if x0_clip is not None and not x0_clip > 0:
            raise ValueError(f"x0_clip must be > 0 (the DDPM clip_sample_range) or None, got {x0_clip}.")
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"unsupported scheduler prediction_type '{prediction_type}': the one-step x0 formula is defined "
                f"for 'epsilon', 'v_prediction' and 'sample'. Use a base model with one of these."
            )
        if not 0 <= timestep < len(alphas_cumprod):
            raise ValueError(f"timestep must be in [0, {len(alphas_cumprod) - 1}], got {timestep}.")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0 (1 disables gamma), got {gamma}.")
        config = unet.config
        if getattr(config, "addition_embed_type", None) != "text_time":
            raise ValueError(
                "the UNet is not SDXL-shaped: expected addition_embed_type='text_time' (micro-conditioning), "
                f"found {getattr(config, 'addition_embed_type', None)!r}. BokehDiff needs an SDXL base model."
            )
        expected_in = 6 * config.addition_time_embed_dim + pooled_prompt_embeds.shape[-1]
        if config.projection_class_embeddings_input_dim != expected_in:
            raise ValueError(
                f"pooled prompt embedding width {pooled_prompt_embeds.shape[-1]} does not fit the UNet "
                f"(projection_class_embeddings_input_dim={config.projection_class_embeddings_input_dim}, expected "
                f"6 * {config.addition_time_embed_dim} + pooled width). Were the text encoders from another model?"
            )
        if prompt_embeds.shape[-1] != config.cross_attention_dim:
            raise ValueError(
                f"prompt embedding width {prompt_embeds.shape[-1]} != UNet cross_attention_dim "
                f"{config.cross_attention_dim}."
            )
        self.unet = unet
        self.vae = vae
        self.register_buffer("prompt_embeds", prompt_embeds.detach().float().clone(), persistent=False)
        self.register_buffer("pooled_prompt_embeds", pooled_prompt_embeds.detach().float().clone(), persistent=False)
        self.timestep = int(timestep)
        self.gamma = float(gamma)
        self.prediction_type = prediction_type
        # DDPMScheduler.step's x0 clamp (clip_sample): None = off (our default; SDXL configs say false).
        self.x0_clip = None if x0_clip is None else float(x0_clip)
        # a_t in float64 on the host: exact, and independent of the module's dtype (bf16 would round it).
        self.alpha_t = float(alphas_cumprod[self.timestep].double())
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_components(
        cls,
        unet: nn.Module,
        vae: nn.Module,
        scheduler,
        text_encoder: nn.Module,
        text_encoder_2: nn.Module,
        tokenizer,
        tokenizer_2,
        *,
        prompt: str = DEFAULT_PROMPT,
        **kwargs,
    ) -> "OneStepBokeh":
        """Build from SDXL components (as ``StableDiffusionXLPipeline`` holds them). The text encoders are only
        used here; keyword arguments go to ``__init__`` (``timestep``, ``gamma``)."""
        prompt_embeds, pooled = encode_prompt(prompt, tokenizer, tokenizer_2, text_encoder, text_encoder_2)
        kwargs.setdefault("prediction_type", scheduler.config.prediction_type)
        return cls(unet, vae, prompt_embeds.cpu(), pooled.cpu(), scheduler.alphas_cumprod, **kwargs)

    # ------------------------------------------------------------------------------------------------------
    def _check_image(self, x: torch.Tensor, channels: int, name: str, like: torch.Tensor | None = None) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{name} must be (B, {channels}, H, W), got shape {tuple(x.shape)}.")
        if like is not None and (x.shape[0] != like.shape[0] or x.shape[-2:] != like.shape[-2:]):
            raise ValueError(
                f"{name} shape {tuple(x.shape)} does not match the image {tuple(like.shape)} (same B, H, W needed)."
            )

    def encode(self, aif_srgb: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` sRGB in [0, 1] -> scaled latent ``(B, 4, H/8, W/8)`` (float32).

        Uses the mode of the VAE posterior, so encoding is deterministic. Differentiable w.r.t. the VAE's
        encoder (trained by the paper). ``H`` and ``W`` must be multiples of the VAE factor.
        """
        self._check_image(aif_srgb, 3, "aif_srgb")
        f = self.vae_scale_factor
        if aif_srgb.shape[-2] % f or aif_srgb.shape[-1] % f:
            raise ValueError(
                f"image size {tuple(aif_srgb.shape[-2:])} must be a multiple of {f} (the VAE's downsampling); "
                f"pad the image (OneStepBokehPipeline does this for you)."
            )
        x = gamma_in(aif_srgb, self.gamma) * 2 - 1  # the VAE expects [-1, 1]
        latent = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode().float()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latent - shift) * self.vae.config.scaling_factor

    def time_ids(self, batch: int, original_size, crop_top_left, target_size) -> torch.Tensor:
        """``(B, 6)`` SDXL micro-conditioning on the UNet's device (see :func:`sdxl_time_ids`)."""
        return sdxl_time_ids(original_size, crop_top_left, target_size, batch).to(self.prompt_embeds.device)

    def unet_kwargs(
        self,
        disparity: torch.Tensor | None,
        coc_px: torch.Tensor | None,
        *,
        pisa_hardness: float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict | None:
        """``cross_attention_kwargs`` for the UNet: ``disp_coc`` ``(B, 2, H, W)`` float32 at image resolution
        (channel 0 disparity, channel 1 signed CoC in px), plus ``pisa_hardness`` / a generator for PISA's
        occlusion sampling where the installed processors accept them. ``None`` when no processor takes
        ``disp_coc`` (no PISA installed: the physics terms are off)."""
        accepted = pisa_kwarg_names(self.unet)
        if "disp_coc" not in accepted or disparity is None:
            return None
        kwargs: dict = {"disp_coc": torch.cat([disparity.float(), coc_px.float()], dim=1)}
        if pisa_hardness is not None and "pisa_hardness" in accepted:
            kwargs["pisa_hardness"] = float(pisa_hardness)
        if generator is not None:
            for name in ("generator", "pisa_generator"):
                if name in accepted:
                    kwargs[name] = generator
        return kwargs

    def noise_to_x0(self, z: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """The DDPM relation at t: UNet output ``pred`` (float32) and latent ``z`` -> ``x0``, then the optional
        :attr:`x0_clip` clamp (DDPM's clip_sample). Shapes ``(B, 4, h, w)``."""
        # DDPM forward process z = sqrt(a) x0 + sqrt(1 - a) eps, solved for x0 (computed in float32).
        sqrt_a, sqrt_1ma = self.alpha_t**0.5, (1.0 - self.alpha_t) ** 0.5
        z = z.float()
        if self.prediction_type == "epsilon":
            x0 = (z - sqrt_1ma * pred) / sqrt_a
        elif self.prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022)
            x0 = sqrt_a * z - sqrt_1ma * pred
        else:
            x0 = pred
        if self.x0_clip is not None:
            x0 = x0.clamp(-self.x0_clip, self.x0_clip)
        return x0

    def predict_x0(
        self,
        z: torch.Tensor,
        disparity: torch.Tensor | None = None,
        coc_px: torch.Tensor | None = None,
        *,
        original_size=None,
        crop_top_left=(0, 0),
        target_size=None,
        pisa_hardness: float | None = None,
        generator: torch.Generator | None = None,
        cross_attention_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """One UNet evaluation at t = ``self.timestep`` -> clean latent ``x0`` ``(B, 4, h, w)`` float32.

        Args:
            z: scaled latent from :meth:`encode`.
            disparity, coc_px: ``(B, 1, H, W)`` at the *image* resolution of this latent (H = 8 h).
            original_size / crop_top_left / target_size: micro-conditioning in image pixels; defaults are the
                image size, (0, 0) and the image size (a full, uncropped image).
            pisa_hardness: PISA's CoC sigmoid hardness (inference: large and fixed; training: a schedule).
            generator: seeds PISA's occlusion sampling (passed if the processor accepts one).
            cross_attention_kwargs: overrides the PISA kwargs entirely (advanced use).
        """
        pred = self.predict_noise(
            z, disparity, coc_px, original_size=original_size, crop_top_left=crop_top_left,
            target_size=target_size, pisa_hardness=pisa_hardness, generator=generator,
            cross_attention_kwargs=cross_attention_kwargs,
        )
        return self.noise_to_x0(z, pred)

    def predict_noise(
        self,
        z: torch.Tensor,
        disparity: torch.Tensor | None = None,
        coc_px: torch.Tensor | None = None,
        *,
        original_size=None,
        crop_top_left=(0, 0),
        target_size=None,
        pisa_hardness: float | None = None,
        generator: torch.Generator | None = None,
        cross_attention_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """The raw UNet output at t (``eps``, ``v`` or ``x0`` per :attr:`prediction_type`), float32
        ``(B, 4, h, w)``; arguments as in :meth:`predict_x0`. Tiled rendering under the published protocol
        blends this, then converts with :meth:`noise_to_x0`."""
        if z.ndim != 4:
            raise ValueError(f"latent must be (B, C, h, w), got {tuple(z.shape)}.")
        batch, image_hw = z.shape[0], (z.shape[-2] * self.vae_scale_factor, z.shape[-1] * self.vae_scale_factor)
        if disparity is not None:
            if coc_px is None:
                raise ValueError("coc_px is required together with disparity.")
            ref = torch.empty(batch, 3, *image_hw, device="meta")
            self._check_image(disparity, 1, "disparity", ref)
            self._check_image(coc_px, 1, "coc_px", ref)
        original_size = image_hw if original_size is None else original_size
        target_size = image_hw if target_size is None else target_size
        dtype = self.unet.dtype
        timesteps = torch.full((batch,), self.timestep, dtype=torch.long, device=z.device)
        if cross_attention_kwargs is None:
            cross_attention_kwargs = self.unet_kwargs(disparity, coc_px, pisa_hardness=pisa_hardness, generator=generator)
        pred = self.unet(
            z.to(dtype),
            timesteps,
            encoder_hidden_states=self.prompt_embeds.to(dtype).expand(batch, -1, -1),
            added_cond_kwargs={
                "text_embeds": self.pooled_prompt_embeds.to(dtype).expand(batch, -1),
                "time_ids": self.time_ids(batch, original_size, crop_top_left, target_size).to(z.device),
            },
            cross_attention_kwargs=cross_attention_kwargs,
        ).sample.float()
        return pred

    def decode(self, x0: torch.Tensor, *, to_srgb: bool = True) -> torch.Tensor:
        """Scaled latent ``(B, 4, h, w)`` -> image ``(B, 3, 8h, 8w)`` float32.

        ``to_srgb=True``: sRGB via :func:`gamma_out` (unclamped above 1; see there). ``to_srgb=False``: linear
        light ``(decoded + 1) / 2``, unclamped (useful for losses in linear light). Differentiable.
        """
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        latent = x0 / self.vae.config.scaling_factor + shift
        linear = (self.vae.decode(latent.to(self.vae.dtype)).sample.float() + 1) / 2
        return gamma_out(linear, self.gamma) if to_srgb else linear

    def decode_each(self, x0: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` (sRGB) one latent at a time: a render's bytes then do not depend on the batch it came in
        (batched, the decoder's convolutions alone rounded 5e-3 apart on CPU; docs/conventions.md), and the
        decoder's peak memory is one render's."""
        return torch.cat([self.decode(x0[i:i + 1]) for i in range(len(x0))])

    def forward(
        self,
        aif_srgb: torch.Tensor,
        disparity: torch.Tensor,
        coc_px: torch.Tensor,
        *,
        original_size=None,
        crop_top_left=(0, 0),
        target_size=None,
        pisa_hardness: float | None = None,
        generator: torch.Generator | None = None,
        to_srgb: bool = True,
    ) -> torch.Tensor:
        """Render bokeh: ``(B, 3, H, W)`` sRGB in [0, 1] + disparity + signed CoC (px) -> ``(B, 3, H, W)``.

        Differentiable end to end (training backpropagates through UNet LoRA and the VAE encoder). The output
        is *not* clamped to [0, 1] (see :func:`gamma_out`); clamp for display. Micro-conditioning arguments
        are as in :meth:`predict_x0`.
        """
        self._check_image(aif_srgb, 3, "aif_srgb")
        self._check_image(disparity, 1, "disparity", aif_srgb)
        self._check_image(coc_px, 1, "coc_px", aif_srgb)
        z = self.encode(aif_srgb)
        x0 = self.predict_x0(
            z,
            disparity,
            coc_px,
            original_size=original_size,
            crop_top_left=crop_top_left,
            target_size=target_size,
            pisa_hardness=pisa_hardness,
            generator=generator,
        )
        return self.decode(x0, to_srgb=to_srgb)
