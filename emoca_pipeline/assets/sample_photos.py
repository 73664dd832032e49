"""Real photos with faces for the MediaPipe path of the default DAG (``emoca sample-photos``).

scikit-image ships them, so nothing is downloaded: ``astronaut.jpg`` (one face),
``camera.png`` (one face, grayscale) and ``coffee.jpg`` (no face).
"""

from __future__ import annotations

import os
from pathlib import Path

from emoca_pipeline.io.atomic import atomic_output

__all__ = ["SAMPLE_PHOTOS", "write_sample_photos"]

#: File name -> scikit-image sample of :func:`write_sample_photos`.
SAMPLE_PHOTOS = {"astronaut.jpg": "astronaut", "camera.png": "camera", "coffee.jpg": "coffee"}


def write_sample_photos(out_dir: str | os.PathLike) -> list[Path]:
    """Write :data:`SAMPLE_PHOTOS` to ``out_dir``, each atomically (JPEG quality 95 or PNG).

    Returns:
        the paths written, in :data:`SAMPLE_PHOTOS` order.
    """
    from PIL import Image
    from skimage import data

    out = Path(out_dir)
    written = []
    for name, sample in SAMPLE_PHOTOS.items():
        target = out / name
        jpeg = name.endswith(".jpg")
        with atomic_output(target) as tmp:
            Image.fromarray(getattr(data, sample)()).save(
                tmp, format="JPEG" if jpeg else "PNG", **({"quality": 95} if jpeg else {}))
        written.append(target)
    return written
