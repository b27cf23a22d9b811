"""diffusers attention processors for PISA: :class:`PISAAttnProcessor` runs :func:`~models.pisa.pisa_attention`
in a self-attention layer, :class:`PassthroughAttnProcessor` is the stock processor everywhere else, and
:func:`install_pisa_processors` sets both by layer-name patterns (docs/conventions.md, "PISA")."""

from __future__ import annotations

import collections
import fnmatch

import torch

from .attention import IMPLS, pisa_attention
from .geometry import token_grid
from .published import discretisation


class PassthroughAttnProcessor:
    """Stock ``AttnProcessor2_0`` behaviour for every layer that does not run PISA.

    It declares ``disp_coc`` and ``pisa_hardness`` so diffusers passes them without a per-call warning, and
    ignores them: ``cross_attention_kwargs={"disp_coc": ...}`` reaches every attention layer of the UNet.
    """

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self._stock = AttnProcessor2_0()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        disp_coc: torch.Tensor | None = None,
        pisa_hardness: float | None = None,
    ) -> torch.Tensor:
        return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class PISAAttnProcessor:
    """diffusers attention processor running :func:`pisa_attention` in a self-attention layer.

    Args:
        hardness: CoC sigmoid hardness (> 1; inference uses 1e7). Overridden per call by
            ``cross_attention_kwargs["pisa_hardness"]`` (the training schedule); never mutated.
        occlusion, n_segments, n_supersamples: the self-occlusion term (S segments x P supersamples).
        impl, block_size: see :func:`pisa_attention`.
        seed: occlusion-jitter seed (fixed: bit-reproducible inference). ``None`` draws a new seed per call
            from the global torch RNG (stochastic supersampling while training, reproducible under a seed).
        compat: the released code's discretisation (:mod:`models.pisa.published`: its ``disp_coc`` resize,
            token units and occlusion step).
        physics: ``False`` turns every PISA term off: the processor is then exactly ``AttnProcessor2_0``.
        dropout_p: attention-weight dropout, applied only while the attention module is in training mode.
        occlusion_upsample: occlusion lookups read a disparity map this many times finer than the token
            grid (3, as the released model).
        published_geometry: with ``compat``, also the released token units and occlusion grid
            (:mod:`models.pisa.published`). Set by the pipeline's ``protocol="published"``.

    Attributes:
        last_impl: the implementation the latest call ran (``impl="auto"`` resolved to ``"sparse"`` or
            ``"chunked"``), ``None`` before the first call; ``impl_counts`` counts calls per implementation
            since construction (one processor serves every PISA layer it is installed on).

    Call contract: ``cross_attention_kwargs={"disp_coc": t, "pisa_hardness": optional float}``, with ``t``
    of shape ``(B, 2, H, W)`` at the full image resolution: channel 0 disparity in [0, 1] (1 = near),
    channel 1 signed CoC radius in image pixels. It is resized (area; bilinear with ``compat``) to this
    layer's token grid ``(h, w)``, with ``px_per_token = H / h`` and radius ``|coc|``. A batch of 1 is
    broadcast over the hidden states' batch (e.g. classifier-free guidance).
    """

    def __init__(
        self,
        hardness: float = 1e7,
        occlusion: bool = True,
        n_segments: int = 7,
        n_supersamples: int = 5,
        impl: str = "auto",
        seed: int | None = 0,
        compat: bool = False,
        physics: bool = True,
        dropout_p: float = 0.0,
        block_size: int = 256,
        occlusion_upsample: int = 3,
        published_geometry: bool = False,
    ):
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}.")
        if not hardness > 1:
            raise ValueError(f"hardness must be > 1; got {hardness}.")
        self.hardness = float(hardness)
        self.occlusion = bool(occlusion)
        self.n_segments = int(n_segments)
        self.n_supersamples = int(n_supersamples)
        self.impl = impl
        self.seed = seed
        self.compat = bool(compat)
        self.physics = bool(physics)
        self.dropout_p = float(dropout_p)
        self.block_size = int(block_size)
        self.occlusion_upsample = int(occlusion_upsample)
        self.published_geometry = bool(published_geometry)
        discretisation(self.compat, self.published_geometry)  # raises on published_geometry without compat
        self._stock = PassthroughAttnProcessor()
        self.last_impl: str | None = None
        self.impl_counts: collections.Counter = collections.Counter()

    def config(self) -> dict:
        """The settings, for checkpoint metadata."""
        keys = ("hardness", "occlusion", "n_segments", "n_supersamples", "impl", "seed", "compat", "physics",
                "dropout_p", "block_size", "occlusion_upsample", "published_geometry")
        return {key: getattr(self, key) for key in keys}

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        disp_coc: torch.Tensor | None = None,
        pisa_hardness: float | None = None,
    ) -> torch.Tensor:
        if not self.physics:
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if encoder_hidden_states is not None:
            raise ValueError(
                "PISAAttnProcessor is for self-attention only (got encoder_hidden_states); install it on attn1 "
                "layers, e.g. install_pisa_processors(unet, patterns=('down_blocks.1.attentions.0.*.attn1',))."
            )
        if attention_mask is not None:
            raise ValueError("PISAAttnProcessor does not support attention_mask; self-attention in the UNet has none.")
        if disp_coc is None:
            raise ValueError(
                'PISAAttnProcessor needs cross_attention_kwargs={"disp_coc": (B, 2, H, W)} (disparity, signed CoC '
                "in pixels); pass it, or build the processor with physics=False."
            )
        if disp_coc.ndim != 4 or disp_coc.shape[1] != 2:
            raise ValueError(f"disp_coc must be (B, 2, H, W) (disparity, CoC px); got {tuple(disp_coc.shape)}.")

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, n_tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        # disp_coc at image resolution -> this layer's token grid; units stay image pixels.
        H_img, W_img = disp_coc.shape[-2:]
        if input_ndim == 4:
            h, w = height, width
        else:
            h, w = token_grid(n_tokens, H_img, W_img)
        dc = disp_coc.detach().to(device=hidden_states.device, dtype=torch.float32)
        if dc.shape[0] != batch_size:
            if dc.shape[0] != 1:
                raise ValueError(f"disp_coc batch {dc.shape[0]} must be 1 or match the hidden states' {batch_size}.")
            dc = dc.expand(batch_size, -1, -1, -1)
        geometry = discretisation(self.compat, self.published_geometry)
        tok = geometry.resize(dc, (h, w))
        occ_map = geometry.resize(dc[:, :1], (h * self.occlusion_upsample, w * self.occlusion_upsample))[:, 0]

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)))
        hidden_states, self.last_impl = pisa_attention(
            query,
            key,
            value,
            tok[:, 0],
            tok[:, 1],
            hardness=self.hardness if pisa_hardness is None else float(pisa_hardness),
            px_per_token=H_img / h,
            occlusion=self.occlusion,
            n_segments=self.n_segments,
            n_supersamples=self.n_supersamples,
            seed=seed,
            compat=self.compat,
            impl=self.impl,
            block_size=self.block_size,
            dropout_p=self.dropout_p,
            training=attn.training,
            occlusion_disparity=occ_map,
            published_geometry=self.published_geometry,
            return_impl=True,
        )
        self.impl_counts[self.last_impl] += 1
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_pisa_processors(
    unet: torch.nn.Module,
    patterns: tuple[str, ...] | list[str] = ("down_blocks.1.attentions.0.*.attn1",),
    **pisa_kwargs,
) -> list[str]:
    """Set :class:`PISAAttnProcessor` on the self-attention layers matching ``patterns`` and
    :class:`PassthroughAttnProcessor` on every other attention layer of ``unet``.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (peft LoRA adapters may be attached).
        patterns: ``fnmatch`` patterns over attention-module names (``*`` also matches dots), e.g. the
            default ``"down_blocks.1.attentions.0.*.attn1"`` (SDXL's self-attention at 1/16 resolution).
        **pisa_kwargs: forwarded to ``PISAAttnProcessor`` (hardness, occlusion, impl, seed, ...); settings left
            out keep its defaults (the inference settings). Callers set them from their own configuration:
            ``models.pipeline`` (``DEFAULT_PISA``, ``protocol``) and training (``pisa_*`` keys of configs/train_*.yaml).

    Returns:
        Sorted names of the attention modules given PISA.

    Raises:
        ValueError: a pattern matches no attention layer, or matches a cross-attention layer.
    """
    if isinstance(patterns, str):
        patterns = (patterns,)
    modules = dict(unet.named_modules())
    names = [key[: -len(".processor")] for key in unet.attn_processors]
    matched: dict[str, list[str]] = {p: [n for n in names if fnmatch.fnmatchcase(n, p)] for p in patterns}
    for pattern, hits in matched.items():
        if not hits:
            examples = ", ".join(names[:4])
            raise ValueError(
                f"PISA pattern {pattern!r} matches no attention layer of the UNet (e.g. {examples}); "
                "fix the pattern in the config (fnmatch syntax, '*' matches dots too)."
            )
    pisa_names = sorted({n for hits in matched.values() for n in hits})
    for name in pisa_names:
        if getattr(modules[name], "is_cross_attention", False):
            raise ValueError(
                f"PISA pattern matched cross-attention layer {name!r}; PISA applies to self-attention (attn1)."
            )
    pisa = PISAAttnProcessor(**pisa_kwargs)
    passthrough = PassthroughAttnProcessor()
    unet.set_attn_processor({f"{n}.processor": (pisa if n in pisa_names else passthrough) for n in names})
    return pisa_names
