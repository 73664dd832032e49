"""The DataLoader side of ``emoca reconstruct``: items -> decoded photos -> faces -> crops.

:class:`CropStream` runs in the workers: it decodes (``read_image``; OpenCV for video
frames), finds faces with the landmarker for folders and videos (MediaPipe, built lazily
in each worker), and crops as DESIGN §4 (from the 68 landmarks when finite, else the
detector box). A bad item becomes a :class:`Face` with a status and no crop.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from emoca_pipeline.inference.inputs import InputItem, InputSpec, iter_items

if TYPE_CHECKING:
    from emoca_pipeline.inference.reconstruct import ReconstructSettings

__all__ = ["CropStream", "Face", "Sample", "identity", "worker_init"]


class Face(NamedTuple):
    face_index: int | None
    status: str
    transform: np.ndarray  # (3, 3) original -> crop, NaN without a face
    crop: np.ndarray | None  # (S, S, 3) uint8


class Sample(NamedTuple):
    local: int  # position in the shard
    item: InputItem
    image_id: str | None
    width: int
    height: int
    faces: list[Face]
    photo: np.ndarray | None  # (H, W, 3) uint8 for overlays


_NAN_T = np.full((3, 3), np.nan)


def identity(sample: Any) -> Any:
    return sample


def worker_init(_: int) -> None:
    # Not cv2.setNumThreads: reconfiguring OpenCV's thread pool inherited through fork hangs
    # (pthread_cond_destroy on the parent's condition variables); using it is safe.
    torch.set_num_threads(1)


class CropStream(IterableDataset):
    """Samples of shard I of N from local position ``start`` on; worker w of W takes every
    W-th, so that the DataLoader's round-robin returns them in order."""

    def __init__(self, spec: InputSpec, settings: ReconstructSettings, image_size: int,
                 start: int, keep_photo: bool) -> None:
        super().__init__()
        self.spec, self.settings, self.size = spec, settings, image_size
        self.start, self.keep_photo = start, keep_photo
        self._landmarker: Any = None
        self._capture: Any = None

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        n, shard, start = self.settings.num_shards, self.settings.shard, self.start

        def keep(k: int) -> bool:
            local = k // n
            return k % n == shard and local >= start and (local - start) % workers == worker

        try:
            for item, frame in iter_items(self.spec, keep):
                yield self._sample(item, frame)
        finally:
            if self._capture is not None:
                self._capture[1].release()

    def _decode(self, item: InputItem, frame: np.ndarray | None) -> tuple[Any, str | None]:
        from emoca_pipeline.io.images import DecodedImage, image_id, read_image

        if frame is None and item.frame is not None:
            frame = self._video_frame(item.source, item.frame)
            if frame is None:
                empty = np.zeros((0, 0, 3), np.uint8)
                return DecodedImage(empty, "decode_error", f"video frame {item.frame} could "
                                    "not be read", 0, 0, ""), item.image_id
        if frame is not None:
            height, width = frame.shape[:2]
            ident = item.image_id or image_id(f"{height}x{width}\n".encode() + frame.tobytes())
            return DecodedImage(frame, "ok", "", width, height, "video"), ident
        try:
            data = Path(item.source).read_bytes()
        except OSError:
            return read_image(item.source, self.settings.max_pixels), item.image_id
        return (read_image(data, self.settings.max_pixels),
                item.image_id or (image_id(data) if data else None))

    def _video_frame(self, source: str, index: int) -> np.ndarray | None:
        import cv2

        if self._capture is None or self._capture[0] != source:
            if self._capture is not None:
                self._capture[1].release()
            self._capture = [source, cv2.VideoCapture(source), -1]
        _, capture, position = self._capture
        if position != index:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = capture.read()
        self._capture[2] = index + 1
        return np.ascontiguousarray(bgr[..., ::-1]) if ok and bgr is not None else None

    def _sample(self, item: InputItem, frame: np.ndarray | None) -> Sample:
        local = item.index // self.settings.num_shards
        if item.status != "ok":
            face = Face(item.face_index, item.status, _NAN_T, None)
            return Sample(local, item, item.image_id, 0, 0, [face], None)
        decoded, ident = self._decode(item, frame)
        if not decoded.ok:
            face = Face(item.face_index, decoded.status_line, _NAN_T, None)
            return Sample(local, item, ident, decoded.width, decoded.height, [face], None)
        image = decoded.image
        if self.spec.detects_faces:
            faces = self._detect(image)
        else:
            faces = [self._crop(image, item.face_index, item.landmarks, item.bbox)]
        photo = image if self.keep_photo else None
        return Sample(local, item, ident, decoded.width, decoded.height, faces, photo)

    def _detect(self, image: np.ndarray) -> list[Face]:
        from emoca_pipeline.data import make_landmarker, mediapipe_to_68

        if self._landmarker is None:
            self._landmarker = make_landmarker(self.settings.landmarker,
                                               max_faces=self.settings.max_faces)
        try:
            detections = self._landmarker.detect(image)
        except Exception as error:  # noqa: BLE001 - a bad image is a row, not a crash
            return [Face(None, f"detect_error: {type(error).__name__}: {error}"[:200], _NAN_T,
                          None)]
        if not detections:
            return [Face(None, "no_face", _NAN_T, None)]
        faces = []
        for index, detection in enumerate(detections):
            points = detection.landmarks
            if detection.scheme == "mediapipe478":
                points = mediapipe_to_68(points)
            faces.append(self._crop(image, index, points, detection.bbox))
        return faces

    def _crop(self, image: np.ndarray, face_index: int | None, landmarks: np.ndarray | None,
              bbox: np.ndarray | None) -> Face:
        from emoca_pipeline.data import (
            crop_box_from_bbox,
            crop_box_from_landmarks,
            crop_transform,
            warp_crop,
        )

        try:
            if landmarks is not None and np.isfinite(landmarks).all():
                box = crop_box_from_landmarks(landmarks)
            elif bbox is not None and np.isfinite(bbox).all():
                box = crop_box_from_bbox(bbox)
            else:
                return Face(face_index, "crop_error: no finite landmarks or box", _NAN_T, None)
            transform = crop_transform(box.center, box.size, self.size)
        except ValueError as error:
            return Face(face_index, f"crop_error: {error}", _NAN_T, None)
        return Face(face_index, "ok", transform, warp_crop(image, transform, self.size))
