"""Explicit Arrow schemas of the data stage's tables: detection shards and the manifest.

Both tables carry their identity in the Parquet file's key-value metadata (keys prefixed
``emoca.``), so a reader can check what it was given before touching a row:

- ``emoca.table``: ``"detections"`` or ``"manifest"``;
- ``emoca.schema_version``: :data:`SCHEMA_VERSION` (bumped on any incompatible change);
- ``emoca.landmarks_scheme``: the scheme of the ``landmarks`` column, always ``"fan68"``
  (the iBUG 68 points, 0-indexed, whatever the detector);
- detections also: ``emoca.landmark_scheme`` (the detector's own scheme, ``"mediapipe478"`` or
  ``"fan68"``), ``emoca.detector`` and ``emoca.detector_version``, and what a rerun needs to
  tell a finished shard from a stale one (see :mod:`emoca_pipeline.data.detect`).

Detection table: one row per (image, face). An image without a usable face still has one
row, whose ``status`` says why (``no_face``, a decode status, ...), so that *rows out ==
images in* (counting each image's face rows as one). On such a row ``face_index`` and
``score`` are null and the fixed-size lists (``bbox``, ``landmarks``, ``crop_transform``) are
all NaN; ``mediapipe_landmarks`` is all NaN unless the detector is MediaPipe.

Why NaN and not null in the fixed-size lists: pyarrow before 26 writes null fixed-size
lists to Parquet but cannot read them back ("Expected all lists to be of size=N but index
i had size=0", apache/arrow#35692, fixed in 2026). NaN rows read back everywhere, and the
``status``/``face_index`` columns say which rows hold a face.

Coordinates are pixels of the decoded image (after EXIF orientation) with integer values at
pixel centres, x right, y down. Fixed-size lists store points flattened ``[x0, y0, x1, y1, ...]``
and matrices row-major.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

__all__ = [
    "DETECTION_SCHEMA",
    "DETECTION_STATUSES",
    "LANDMARKS_SCHEME",
    "MANIFEST_SCHEMA",
    "MEDIAPIPE_POINTS",
    "SCHEMA_VERSION",
    "SPLITS",
    "check_table_metadata",
    "fixed_list_array",
    "fixed_list_values",
    "metadata_of",
    "table_metadata",
]

#: Version of both table layouts; readers refuse other versions.
SCHEMA_VERSION = "1"

#: Scheme of every ``landmarks`` column (iBUG 68; see :mod:`emoca_pipeline.data.landmarks`).
LANDMARKS_SCHEME = "fan68"

#: Number of MediaPipe Face Mesh points kept in ``mediapipe_landmarks`` (468 + 10 iris).
MEDIAPIPE_POINTS = 478

#: Every ``status`` a detection row can have. ``ok`` rows carry a face; the others carry the
#: reason in ``reason``. The decode statuses come from :func:`emoca_pipeline.io.images.read_image`.
DETECTION_STATUSES = (
    "ok",            # a face: bbox, landmarks, crop transform
    "no_face",       # decoded, but the landmarker found no face
    "missing",       # the file does not exist or cannot be read
    "not_a_file",    # a FIFO, device or socket (after symlinks): never read
    "changed",       # the file changed while it was read
    "empty",         # 0 bytes
    "too_large",     # over the byte limit (before reading) or pixel limit (before decoding)
    "decode_error",  # not an image, truncated, corrupt, zero-sized, unreadable video frame
    "detect_error",  # the landmarker raised on this image
    "crop_error",    # a face whose landmarks give no valid crop (degenerate box)
)

#: Split names: of the manifest, the synthetic dataset and the training data modules.
SPLITS = ("train", "val", "test")


def _points(count: int) -> pa.DataType:
    return pa.list_(pa.float32(), 2 * count)


#: One row per (image, face); see the module docstring.
DETECTION_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=True,
                 metadata={"doc": "BLAKE2b-160 of the file bytes (of the RGB frame for videos); "
                                  "null when the file cannot be read"}),
        pa.field("path", pa.string(), nullable=False,
                 metadata={"doc": "the item's key: path relative to the input root (POSIX), "
                                  "or 'VIDEO#frame=N' for a video frame"}),
        pa.field("frame", pa.int32(), nullable=True,
                 metadata={"doc": "frame index for video inputs, else null"}),
        pa.field("width", pa.int32(), nullable=False,
                 metadata={"doc": "decoded width (declared width for too_large); 0 if unknown"}),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("face_index", pa.int16(), nullable=True,
                 metadata={"doc": "0 = largest face; null on rows without a face"}),
        pa.field("bbox", _points(2), nullable=False,
                 metadata={"doc": "(x0, y0, x1, y1) detector box in pixels; NaN if no face"}),
        pa.field("score", pa.float32(), nullable=True),
        pa.field("landmarks", _points(68), nullable=False,
                 metadata={"doc": "68 iBUG points (x, y) flattened: fan68 scheme; NaN if no "
                                  "face"}),
        pa.field("mediapipe_landmarks", _points(MEDIAPIPE_POINTS), nullable=False,
                 metadata={"doc": "the 478 MediaPipe Face Mesh points (x, y) flattened; "
                                  "NaN for other detectors and rows without a face"}),
        pa.field("crop_transform", pa.list_(pa.float64(), 9), nullable=False,
                 metadata={"doc": "3x3 similarity, original pixels -> crop pixels, row-major; "
                                  "NaN if no face"}),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detector", pa.string(), nullable=False),
        pa.field("detector_version", pa.string(), nullable=False),
    ]
)

#: One row per labelled face; partitioned on disk by ``dataset`` and ``split`` (hive style).
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("root", pa.string(), nullable=False,
                 metadata={"doc": "folder that 'path' is relative to (absolute)"}),
        pa.field("path", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=True),
        pa.field("face_index", pa.int16(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("bbox", _points(2), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("landmarks", _points(68), nullable=False),
        pa.field("crop_transform", pa.list_(pa.float64(), 9), nullable=False),
        pa.field("expression", pa.int16(), nullable=True,
                 metadata={"doc": "AffectNet order 0..7: neutral, happy, sad, surprise, fear, "
                                  "disgust, anger, contempt; null when unlabelled"}),
        pa.field("valence", pa.float32(), nullable=True),
        pa.field("arousal", pa.float32(), nullable=True),
        pa.field("identity", pa.string(), nullable=True),
        pa.field("detector", pa.string(), nullable=False),
    ]
)


def table_metadata(table: str, **extra: str | int | float) -> dict[bytes, bytes]:
    """File metadata for a table: ``emoca.table``, ``emoca.schema_version`` and
    ``emoca.landmarks_scheme``, plus ``emoca.<key>`` for every keyword."""
    values: dict[str, str] = {
        "table": table, "schema_version": SCHEMA_VERSION, "landmarks_scheme": LANDMARKS_SCHEME,
    }
    values.update({key: str(value) for key, value in extra.items()})
    return {f"emoca.{key}".encode(): value.encode() for key, value in values.items()}


def metadata_of(schema: pa.Schema) -> dict[str, str]:
    """The ``emoca.*`` entries of a schema's metadata, without the prefix."""
    raw: Mapping[bytes, bytes] = schema.metadata or {}
    return {
        key.decode()[len("emoca."):]: value.decode()
        for key, value in raw.items() if key.startswith(b"emoca.")
    }


def check_table_metadata(schema: pa.Schema, table: str, source: str) -> dict[str, str]:
    """Check that ``schema`` describes ``table`` at :data:`SCHEMA_VERSION`.

    Returns:
        the ``emoca.*`` metadata (see :func:`metadata_of`).

    Raises:
        ValueError: one line naming ``source`` and what is wrong.
    """
    meta = metadata_of(schema)
    if meta.get("table") != table:
        raise ValueError(f"{source}: not an emoca {table} table "
                         f"(metadata emoca.table={meta.get('table')!r})")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{source}: {table} schema version {meta.get('schema_version')!r}, "
                         f"this version reads {SCHEMA_VERSION!r}")
    return meta


def fixed_list_array(
    values: np.ndarray, width: int, dtype: pa.DataType | None = None
) -> pa.FixedSizeListArray:
    """A fixed_size_list array (no nulls) from a dense ``(rows, width)`` block.

    Args:
        values: ``(rows, width)`` numbers; NaN marks values that do not exist.
        width: list size.
        dtype: value type (default float32).
    """
    dtype = dtype or pa.float32()
    block = np.asarray(values, dtype=dtype.to_pandas_dtype())
    if block.ndim != 2 or block.shape[1] != width:
        raise ValueError(f"expected a (rows, {width}) block, got {block.shape}")
    flat = pa.array(np.ascontiguousarray(block).reshape(-1), type=dtype)
    return pa.FixedSizeListArray.from_arrays(flat, width)



def fixed_list_values(
    column: pa.ChunkedArray | pa.Array, width: int, *, source: str = "", name: str = "",
    dtype: np.dtype | type = np.float32, finite: bool = False,
) -> np.ndarray:
    """A list column with ``width`` numbers per row -> ``(rows, width)`` numpy block.

    The one reader of list columns: fixed_size_list, list and large_list are accepted (a
    pandas round trip turns fixed-size lists into plain lists), nulls are not.

    Args:
        column: the column (chunked or not).
        width: numbers per row.
        source, name: the file and column, for error messages.
        dtype: numpy type of the result.
        finite: also refuse NaN and inf.

    Raises:
        ValueError: one line naming ``source`` and ``name``: not a list of numbers, null
            rows, rows of another length, or (with ``finite``) NaN/inf values.
    """
    where = f"{source}: column {name!r}" if source else f"column {name!r}"
    kind = column.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind)
            or pa.types.is_large_list(kind)) or not (
            pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)):
        raise ValueError(f"{where} must be a list of numbers, got {kind}")
    if column.null_count:
        raise ValueError(f"{where} has {column.null_count} null row(s)")
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(kind):
        if kind.list_size != width:
            raise ValueError(f"{where} has rows of length {kind.list_size}, expected {width}")
    else:
        import pyarrow.compute as pc

        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        if lengths.size and (lengths != width).any():
            bad = int(lengths[lengths != width][0])
            raise ValueError(f"{where} has rows of length {bad}, expected {width}")
    values = array.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    values = values.reshape(len(array), width)
    if finite and not np.isfinite(values).all():
        raise ValueError(f"{where} contains NaN or inf values")
    return values
