"""The reconstruction table: one row per face, codes as fixed-size lists.

Columns (widths from the model's settings; the released EMOCA's in brackets):
``image_id`` (string), ``path`` (string: the input's key, a path relative to its root or as
the table gives it, ``VIDEO#frame=N`` for video frames), ``frame`` (int32, null for photos),
``width``/``height`` (int32, 0 when the image could not be decoded), ``face_index`` (int16,
null on rows without a face), ``status`` (``ok`` or the reason), ``shape`` [100], ``tex``
[50], ``exp`` [50], ``pose`` [6] (global 3 + jaw 3), ``cam`` [3] (s, tx, ty; crop frame),
``light`` [27] (9 SH bands x RGB, row-major), ``detail`` [128] (float32 fixed-size lists),
``crop_transform`` (float64 [9]: the 3x3 similarity original pixels -> model-input crop
pixels, row-major), ``landmarks`` (float32 [136]: the 68 projected FLAME landmarks, x, y
interleaved, in original-image pixels), ``mediapipe_landmarks`` (float32 [210]: the 105
MediaPipe points, the same way), then the input's label columns when present
(:data:`~emoca_pipeline.inference.inputs.LABEL_COLUMNS`).

Rows without codes (a data-stage status, no face, a non-finite forward pass, ``--no-detail``
for ``detail``) hold NaN in the lists, never null: pyarrow before 26 cannot read null
fixed-size lists back from Parquet (see :mod:`emoca_pipeline.data.schema`).

File metadata (plain keys): ``table`` = ``reconstructions``, ``schema_version``,
``model_id``, ``checkpoint_sha256``, ``image_size``, ``precision``, ``detail``, ``shard``,
``num_shards``, ``input``, ``input_kind``, ``fingerprint`` (what a rerun compares).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

from emoca_pipeline.inference.inputs import LABEL_COLUMNS

__all__ = ["CODE_NAMES", "RECONSTRUCTION_TABLE", "SCHEMA_VERSION", "reconstruction_schema"]

SCHEMA_VERSION = "1"
RECONSTRUCTION_TABLE = "reconstructions"
#: Code columns in table order.
CODE_NAMES = ("shape", "tex", "exp", "pose", "cam", "light", "detail")
MEDIAPIPE_POINTS = 105


def reconstruction_schema(code_widths: Mapping[str, int], labels: Sequence[str] = (),
                          metadata: Mapping[str, str] | None = None) -> pa.Schema:
    """The table's schema for ``code_widths`` (name -> width, :data:`CODE_NAMES`) and the
    pass-through ``labels``; ``metadata`` becomes the file metadata."""
    fields = [
        pa.field("image_id", pa.string()),
        pa.field("path", pa.string(), nullable=False),
        pa.field("frame", pa.int32()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("face_index", pa.int16()),
        pa.field("status", pa.string(), nullable=False),
    ]
    fields += [pa.field(name, pa.list_(pa.float32(), code_widths[name]), nullable=False)
               for name in CODE_NAMES]
    fields += [
        pa.field("crop_transform", pa.list_(pa.float64(), 9), nullable=False),
        pa.field("landmarks", pa.list_(pa.float32(), 136), nullable=False),
        pa.field("mediapipe_landmarks", pa.list_(pa.float32(), 2 * MEDIAPIPE_POINTS),
                 nullable=False),
    ]
    fields += [pa.field(name, LABEL_COLUMNS[name]) for name in labels]
    meta = {key.encode(): str(value).encode() for key, value in (metadata or {}).items()}
    return pa.schema(fields, metadata=meta or None)
