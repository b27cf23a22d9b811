"""On-the-fly paired training data after BokehDiff (Zhu et al., ICCV 2025, Sec. 3.3 "data synthesis"): layered
scenes (RGBA foregrounds over a tilted background) and their bokeh, ray traced as in BokehMe (Peng et al., 2022).

Modules, bottom up: :mod:`.assets` (loading and resizing cut-outs and photos), :mod:`.scene` (the paper's scene
model, :func:`sample_scene`), :mod:`.render` (compositing and ray-traced rendering of a window),
:mod:`.published` (the released code's synthesis variants), :mod:`.dataset` (:class:`OnTheFlyDataset`,
:func:`synthesize_batch`), :mod:`.samples` (sample data from scikit-image's photos). Every name is re-exported
here, so ``data.synthesis.X`` works for all of them.
"""

from .assets import (
    ALPHA_EPS,
    SKIP_REASONS,
    BadSampleError,
    Foreground,
    cover_crop,
    crop_to_alpha,
    list_images,
    load_background,
    load_foreground,
    resize_foreground,
    resize_image,
)
from .dataset import (
    AIF_COMPOSITES,
    APERTURE_SAMPLE_RULES,
    COC_CONDITIONS,
    SKIP_REPORT_WORKERS,
    OnTheFlyDataset,
    apply_augmentation,
    largest_crop_size,
    synthesize_batch,
)
from .published import published_aperture_count, published_condition_K, published_scene_aperture_count
from .render import composite_window, plane_disparity, render_window, shift_planes
from .samples import (
    SAMPLE_BACKGROUNDS,
    SAMPLE_CUTOUTS,
    fractal_alpha,
    logo_cutout,
    photo_cutout,
    render_sample_scene,
    sample_backgrounds,
    sample_foregrounds,
    write_otf_folder,
    write_sample_data,
)
from .scene import (
    BASE_COC_PX,
    BASE_RESOLUTION,
    BG_TILT_DIRECTIONS,
    Scene,
    SceneConfig,
    SceneLayer,
    margin_for,
    sample_scene,
)

__all__ = [
    "AIF_COMPOSITES", "ALPHA_EPS", "APERTURE_SAMPLE_RULES", "BASE_COC_PX", "BASE_RESOLUTION", "BG_TILT_DIRECTIONS",
    "COC_CONDITIONS", "SAMPLE_BACKGROUNDS", "SAMPLE_CUTOUTS", "SKIP_REASONS", "SKIP_REPORT_WORKERS",
    "BadSampleError", "Foreground", "OnTheFlyDataset", "Scene", "SceneConfig", "SceneLayer",
    "apply_augmentation", "composite_window", "cover_crop", "crop_to_alpha", "fractal_alpha", "largest_crop_size",
    "list_images", "load_background", "load_foreground", "logo_cutout", "margin_for", "photo_cutout",
    "plane_disparity", "published_aperture_count", "published_condition_K", "published_scene_aperture_count",
    "render_sample_scene", "render_window", "resize_foreground", "resize_image", "sample_backgrounds",
    "sample_foregrounds", "sample_scene", "shift_planes", "synthesize_batch", "write_otf_folder",
    "write_sample_data",
]
