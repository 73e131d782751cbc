"""`--mask`: regions of the frame that come out exactly as they went in (a dashcam's bonnet, a timestamp).

The mask is a greyscale PNG, or the alpha channel of an RGBA one: white (1) keeps the input pixel,
black (0) takes the restored one, grey blends them: out = mask * in + (1 - mask) * out.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from unweather.errors import UnweatherError

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)


def load_mask(path: str) -> np.ndarray:
    """Read `path` as a float32 (H, W) array in [0, 1]: its alpha channel if it has one, else its grey level.

    Raises:
        UnweatherError: a missing or unreadable file.
    """
    import cv2
    import numpy as np

    if not os.path.isfile(path):
        raise UnweatherError(f"cannot read the mask {path}: no such file.")
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise UnweatherError(f"cannot read the mask {path}: not an image OpenCV can decode (use a PNG).")
    scale = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[:, :, 3]  # alpha
        elif image.shape[2] == 1:
            image = image[:, :, 0]
        else:
            image = cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2GRAY)
    return np.clip(image.astype(np.float32) / scale, 0.0, 1.0)


def fit_mask(mask: np.ndarray, width: int, height: int, name: str) -> np.ndarray:
    """`mask` at `width` x `height`: as it is when it fits, else resized, with a warning."""
    import cv2

    if mask.shape == (height, width):
        return mask
    logger.warning("the mask %s is %dx%d and the frames %dx%d: resizing it", name, mask.shape[1], mask.shape[0],
                   width, height)
    resized = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
    # Inside a white or black region interpolation may leave 1 - 1e-7: such pixels stay exact.
    resized[resized > 1.0 - 1e-4] = 1.0
    resized[resized < 1e-4] = 0.0
    return resized
