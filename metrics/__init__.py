"""Evaluation metrics (PSNR, SSIM, LPIPS, DISTS), depth-discontinuity bands and reports."""

from metrics.bands import discontinuity_band
from metrics.image import load_learned_metrics, masked_mean, mse_map, psnr_from_mse, ssim_map

__all__ = ["discontinuity_band", "load_learned_metrics", "masked_mean", "mse_map", "psnr_from_mse", "ssim_map"]
