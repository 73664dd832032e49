"""Detection of one chunk of images: read, hash, decode, find faces, crop transforms.

:func:`process_chunk` runs on the workers of the detection stage
(:mod:`emoca_pipeline.data.detect`): each image is read once (bytes -> content hash and
decode, in a background thread one image ahead of the landmarker), its faces get their 68
points, bbox, score and the crop transform (crops are warped at load time from the stored
transform). An image without a face, or one that cannot be read, is one row whose
``status`` says why, so rows out == images in.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pyarrow as pa

from emoca_pipeline.data.crop import CropSettings, crop_box_from_landmarks, crop_transform
from emoca_pipeline.data.labels import load_ground_truth_landmarks
from emoca_pipeline.data.plan import InputItem
from emoca_pipeline.data.schema import DETECTION_SCHEMA, MEDIAPIPE_POINTS, fixed_list_array
from emoca_pipeline.io.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    image_id,
    read_file_bytes,
    read_image,
)

__all__ = ["LANDMARKERS", "ChunkResult", "LandmarkerSpec", "cached_landmarker", "process_chunk"]

#: ``--landmarker`` choices.
LANDMARKERS = ("mediapipe", "fan", "gt")


@dataclass(frozen=True)
class LandmarkerSpec:
    """What a worker needs to build its landmarker (hashable, cheap to ship).

    Attributes:
        name: ``"mediapipe"``, ``"fan"`` or ``"gt"``.
        max_faces: faces kept per image, largest first.
        labels: for ``gt``: the tables with the landmarks (see
            :func:`load_ground_truth_landmarks`), absolute paths.
    """

    name: str = "mediapipe"
    max_faces: int = 1
    labels: tuple[str, ...] = ()

    def build(self) -> Any:
        """A new landmarker (see :mod:`emoca_pipeline.data.landmarks`)."""
        from emoca_pipeline.data.landmarks import GroundTruthLandmarker, make_landmarker

        if self.name == "gt":
            if not self.labels:
                raise ValueError("--landmarker gt needs --labels FILE (a synthetic.parquet "
                                 "table or an AffectNet CSV with facial_landmarks)")
            landmarks: dict[str, np.ndarray] = {}
            for labels in self.labels:
                landmarks.update(load_ground_truth_landmarks(labels))
            return GroundTruthLandmarker(landmarks, scheme="fan68", max_faces=self.max_faces,
                                         allow_missing=True)
        return make_landmarker(self.name, max_faces=self.max_faces)



@functools.lru_cache(maxsize=2)
def cached_landmarker(spec: LandmarkerSpec) -> Any:
    """One landmarker per process and spec: MediaPipe graphs and label tables load once."""
    return spec.build()


class _Rows:
    """Column buffers for detection rows of one chunk."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = defaultdict(list)
        self.bbox: list[np.ndarray] = []
        self.landmarks: list[np.ndarray] = []
        self.mediapipe: list[np.ndarray | None] = []
        self.transform: list[np.ndarray] = []

    def add(
        self, item: InputItem, identifier: str | None, width: int, height: int, status: str,
        reason: str, face_index: int | None = None, score: float | None = None,
        bbox: np.ndarray | None = None, landmarks: np.ndarray | None = None,
        mediapipe: np.ndarray | None = None, transform: np.ndarray | None = None,
    ) -> None:
        c = self.columns
        c["image_id"].append(identifier)
        c["path"].append(item.key)
        c["frame"].append(item.frame if item.frame >= 0 else None)
        c["width"].append(width)
        c["height"].append(height)
        c["face_index"].append(face_index)
        c["score"].append(score)
        c["status"].append(status)
        c["reason"].append(" ".join(reason.split()))
        self.bbox.append(np.full(4, np.nan, np.float32) if bbox is None else bbox)
        self.landmarks.append(np.full(136, np.nan, np.float32) if landmarks is None
                              else landmarks.reshape(-1))
        self.mediapipe.append(None if mediapipe is None else mediapipe.reshape(-1))
        self.transform.append(np.full(9, np.nan) if transform is None else transform.reshape(-1))

    def table(self, detector: str, version: str) -> pa.Table:
        rows = len(self.bbox)
        c = self.columns
        mediapipe = np.full((rows, 2 * MEDIAPIPE_POINTS), np.nan, np.float32)
        for row, points in enumerate(self.mediapipe):
            if points is not None:
                mediapipe[row] = points

        def block(values: list[np.ndarray], width: int) -> np.ndarray:
            return np.stack(values) if values else np.zeros((0, width))

        arrays = {
            "image_id": pa.array(c["image_id"], pa.string()),
            "path": pa.array(c["path"], pa.string()),
            "frame": pa.array(c["frame"], pa.int32()),
            "width": pa.array(c["width"], pa.int32()),
            "height": pa.array(c["height"], pa.int32()),
            "face_index": pa.array(c["face_index"], pa.int16()),
            "bbox": fixed_list_array(block(self.bbox, 4), 4),
            "score": pa.array(c["score"], pa.float32()),
            "landmarks": fixed_list_array(block(self.landmarks, 136), 136),
            "mediapipe_landmarks": fixed_list_array(mediapipe, 2 * MEDIAPIPE_POINTS),
            "crop_transform": fixed_list_array(block(self.transform, 9), 9, pa.float64()),
            "status": pa.array(c["status"], pa.string()),
            "reason": pa.array(c["reason"], pa.string()),
            "detector": pa.array([detector] * rows, pa.string()),
            "detector_version": pa.array([version] * rows, pa.string()),
        }
        return pa.Table.from_arrays([arrays[f.name] for f in DETECTION_SCHEMA],
                                    schema=DETECTION_SCHEMA)


def _read_items(items: Sequence[InputItem], max_pixels: int, max_bytes: int) -> Iterator[
        tuple[InputItem, str | None, DecodedImage]]:
    """(item, image_id, DecodedImage) for each item, in order; never raises for a bad file."""
    frames = [item for item in items if item.frame >= 0]
    if frames:
        yield from _read_video_frames(frames, max_pixels)
        return
    for item in items:
        data = read_file_bytes(item.source, max_bytes)
        if isinstance(data, DecodedImage):  # not read: missing, not_a_file, too_large, ...
            yield item, None, data
            continue
        yield item, image_id(data), read_image(data, max_pixels)

def _read_video_frames(
    items: Sequence[InputItem], max_pixels: int
) -> Iterator[tuple[InputItem, str | None, DecodedImage]]:
    import cv2

    capture = cv2.VideoCapture(items[0].source)
    position = -1
    try:
        for item in items:
            if position != item.frame:
                capture.set(cv2.CAP_PROP_POS_FRAMES, item.frame)
            ok, bgr = capture.read() if capture.isOpened() else (False, None)
            position = item.frame + 1
            if not ok or bgr is None or bgr.size == 0:
                empty = np.zeros((0, 0, 3), np.uint8)
                yield item, None, DecodedImage(empty, "decode_error",
                                               f"video frame {item.frame} could not be read",
                                               0, 0, "")
                continue
            height, width = bgr.shape[:2]
            if width * height > max_pixels:
                empty = np.zeros((0, 0, 3), np.uint8)
                yield item, None, DecodedImage(
                    empty, "too_large", f"{width}x{height} = {width * height} pixels exceeds "
                    f"max_pixels={max_pixels}", width, height, "")
                continue
            rgb = np.ascontiguousarray(bgr[..., ::-1])
            identifier = image_id(f"{height}x{width}\n".encode() + rgb.tobytes())
            yield item, identifier, DecodedImage(rgb, "ok", "", width, height, "video")
    finally:
        capture.release()


_T = TypeVar("_T")


def _prefetch(iterator: Iterator[_T], depth: int = 1) -> Iterator[_T]:
    """Run ``iterator`` in a background thread, ``depth`` items ahead of the consumer.

    Reading, hashing and decoding the next image (Pillow and hashlib release the GIL) then
    overlaps with the landmarker on the current one (MediaPipe's graph calls release it
    too). Items come out in order; an exception in the iterator is raised here.
    """
    buffer: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                buffer.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer is gone

    def produce() -> None:
        try:
            for value in iterator:
                if not put("item", value):
                    return
            put("end", None)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put("error", error)

    thread = threading.Thread(target=produce, name="emoca-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()  # the producer gives up within 0.1 s, even with a full buffer
        thread.join()


class ChunkResult(NamedTuple):
    """The rows of a chunk and what they leave out.

    Attributes:
        table: :data:`~emoca_pipeline.data.schema.DETECTION_SCHEMA` rows in item order,
            faces of an image largest first.
        faces_dropped: faces found beyond ``max_faces`` (not in ``table``).
    """

    table: pa.Table
    faces_dropped: int


def process_chunk(
    items: Sequence[InputItem], spec: LandmarkerSpec, max_pixels: int = DEFAULT_MAX_PIXELS,
    crop: CropSettings | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
) -> ChunkResult:
    """Decode, detect and compute crop transforms for a chunk of images.

    Never raises for a bad file: every item gives at least one row (see
    :data:`~emoca_pipeline.data.schema.DETECTION_STATUSES`). The landmarker is built once
    per process and spec.
    """
    from emoca_pipeline.data.landmarks import mediapipe_to_68

    crop = crop or CropSettings()
    landmarker = cached_landmarker(spec)
    rows = _Rows()
    dropped = 0
    for item, identifier, decoded in _prefetch(_read_items(items, max_pixels, max_bytes)):
        if not decoded.ok:
            rows.add(item, identifier, decoded.width, decoded.height, decoded.status,
                     decoded.reason)
            continue
        try:
            faces, found = landmarker.find_faces(decoded.image, image_key=item.key)
        except Exception as error:  # noqa: BLE001 - one image must not stop the run
            rows.add(item, identifier, decoded.width, decoded.height, "detect_error",
                     f"{type(error).__name__}: {error}"[:200])
            continue
        dropped += found - len(faces)
        if not faces:
            reason = ("no annotated landmarks for this image" if spec.name == "gt"
                      else "the landmarker found no face")
            rows.add(item, identifier, decoded.width, decoded.height, "no_face", reason)
            continue
        for face_index, face in enumerate(faces):
            points = np.asarray(face.landmarks, dtype=np.float32)
            mediapipe = None
            if face.scheme == "mediapipe478" and points.shape[0] == MEDIAPIPE_POINTS:
                mediapipe, points = points, mediapipe_to_68(points)
            common = dict(face_index=face_index, score=float(face.score),
                          bbox=np.asarray(face.bbox, dtype=np.float32).reshape(4))
            if points.shape != (68, 2):
                rows.add(item, identifier, decoded.width, decoded.height, "crop_error",
                         f"landmarks of scheme {face.scheme!r} have shape {points.shape}, "
                         "expected 68 points", **common)
                continue
            try:
                box = crop_box_from_landmarks(points, crop)
                transform = crop_transform(box.center, box.size, crop.out_size)
            except ValueError as error:
                rows.add(item, identifier, decoded.width, decoded.height, "crop_error",
                         str(error), landmarks=points, mediapipe=mediapipe, **common)
                continue
            rows.add(item, identifier, decoded.width, decoded.height, "ok", "",
                     landmarks=points, mediapipe=mediapipe, transform=transform, **common)
    return ChunkResult(rows.table(landmarker.name, str(landmarker.version)), dropped)

