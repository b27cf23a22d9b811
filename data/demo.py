"""Bundled demo data: the Middlebury 'motorcycle' stereo pair shipped inside scikit-image (offline).

Scharstein et al., "High-Resolution Stereo Datasets with Subpixel-Accurate Ground Truth", GCPR 2014.
The measured disparity (pixels) has invalid holes (inf); they are filled from the nearest valid pixel and the
map is min-max normalised to the repository convention (float in [0, 1], 1 = nearest).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from data.io import InputWarning, clean_disparity, read_image


def motorcycle_paths() -> tuple[Path, Path]:
    """Paths of scikit-image's ``motorcycle_left.png`` and ``motorcycle_disp.npz`` (no download needed)."""
    import skimage.data

    root = Path(skimage.data.__file__).parent
    image, disparity = root / "motorcycle_left.png", root / "motorcycle_disp.npz"
    for path in (image, disparity):
        if not path.is_file():
            raise FileNotFoundError(
                f"demo data '{path}' is missing from scikit-image's package; reinstall scikit-image==0.26.0"
            )
    return image, disparity


def load_motorcycle() -> tuple[np.ndarray, np.ndarray]:
    """The demo pair: image ``(3, 500, 741)`` sRGB in [0, 1] and disparity ``(1, 500, 741)`` in [0, 1].

    The holes (about 3% of pixels) are expected and filled quietly; any other repair would still warn.
    """
    image_path, disparity_path = motorcycle_paths()
    image = read_image(image_path)
    with np.load(disparity_path) as archive:
        raw = archive[archive.files[0]]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*invalid pixels.*", category=InputWarning)
        warnings.filterwarnings("ignore", message=".*min-max normalised.*", category=InputWarning)
        disparity = clean_disparity(raw, source=f"disparity '{disparity_path}'", normalise="always")
    return image, disparity
