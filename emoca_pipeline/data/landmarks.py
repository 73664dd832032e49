"""Face detection + landmarks: MediaPipe (offline), FAN (the paper's), or given landmarks.

Every landmarker returns, per image, a list of :class:`FaceDetection` sorted by face size
(box area), largest first, cut to ``max_faces``. Coordinates are pixels of the input image
with integer values at pixel centres, x right, y down (the convention of
:mod:`emoca_pipeline.data.crop`).

Landmark schemes (stored in the detection table's metadata):

- ``"mediapipe478"``: MediaPipe Face Mesh with refined eyes and irises (468 + 10 points);
  :func:`mediapipe_to_68` picks the 68 iBUG points from it;
- ``"fan68"``: the iBUG 68-point scheme (FAN, dlib, 300-W annotations), 0-indexed.

One module over 600 lines on purpose: the three landmarkers share one small contract
(:class:`Landmarker`, :class:`FaceDetection`, :class:`FaceSearch`, the largest-first rule)
and the 478 -> 68 table, and each is about 150 lines.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import urlparse

import numpy as np

__all__ = [
    "IBUG68_MIRROR",
    "MEDIAPIPE_TO_68",
    "FaceDetection",
    "FaceSearch",
    "FanLandmarker",
    "FanSettings",
    "GroundTruthLandmarker",
    "Landmarker",
    "LandmarksNotFoundError",
    "MediaPipeLandmarker",
    "MediaPipeSettings",
    "MissingWeightsError",
    "fan_weight_files",
    "make_landmarker",
    "mediapipe_to_68",
]

# --------------------------------------------------------------------------------------------
# MediaPipe 478 -> iBUG 68
# --------------------------------------------------------------------------------------------

#: MediaPipe Face Mesh vertex index of each iBUG 68 landmark (0-indexed iBUG order).
#:
#: "Right"/"left" are the subject's: the subject's right side is on the image's left.
#: One vertex per point (no averaging between vertices). How the vertices were chosen: each
#: iBUG point's position was predicted on scikit-image's astronaut by fitting the iBUG mean
#: shape (OpenFace's 68-point template) to the eye corners and nose, and the nearest vertex
#: of the matching MediaPipe feature ring was taken; where left and right disagreed, the
#: mirror-symmetric pair was kept, so the map commutes with a horizontal flip
#: (:data:`IBUG68_MIRROR`). The picks agree with PeizhiYan's public Mediapipe_2_Dlib_Landmarks
#: map except where that one averages two vertices, and at 3/13 (58/288, not 132+58/397+288),
#: 6/7 and 9/10 (149/148, 377/378: evenly spaced along the contour, as iBUG's are), 31/35
#: (75/305 in its common version) and 55/59 (405/181, not 321/91).
#:
#: - 0-16 jaw contour on MediaPipe's silhouette ring, from the subject's right ear at eye
#:   level (127, image left) round the chin (8 = menton, 152) to the left ear (356).
#: - 17-21 right brow (outer -> inner) and 22-26 left brow (inner -> outer): upper edge.
#: - 27-30 nose bridge from the nasion (168, between the eyes) to the tip (4);
#:   31-35 lower nose: right alar base 75, 97, subnasale 2, 326, left alar base 305.
#: - 36-41 right eye: outer corner 33, upper lid 160, 158, inner corner 133, lower lid 153,
#:   144; 42-47 left eye: inner corner 362, upper lid 385, 387, outer corner 263, lower lid
#:   373, 380 (the lid-margin ring, not the iris points 468-477).
#: - 48-59 outer lip contour from the right mouth corner (61) clockwise in the image: upper
#:   lip 39, 37 (cupid's bow), 0 (middle), 267, 269, left corner 291, lower lip 405, 314,
#:   17 (middle), 84, 181; 60-67 inner lip contour: right inner corner 78, upper 82, 13, 312,
#:   left inner corner 308, lower 317, 14, 87.
MEDIAPIPE_TO_68: np.ndarray = np.array(
    [
        # jaw 0-16
        127, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 356,
        # right brow 17-21, left brow 22-26
        70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
        # nose bridge 27-30, lower nose 31-35
        168, 197, 5, 4, 75, 97, 2, 326, 305,
        # right eye 36-41, left eye 42-47
        33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
        # outer lips 48-59
        61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
        # inner lips 60-67
        78, 82, 13, 312, 308, 317, 14, 87,
    ],
    dtype=np.int64,
)
MEDIAPIPE_TO_68.flags.writeable = False

#: The iBUG 68 index of each point's mirror image (left <-> right); ``p[IBUG68_MIRROR]``
#: with x negated gives the landmarks of the horizontally flipped face.
IBUG68_MIRROR: np.ndarray = np.array(
    list(range(16, -1, -1))                 # jaw
    + list(range(26, 16, -1))               # brows
    + [27, 28, 29, 30]                      # nose bridge
    + [35, 34, 33, 32, 31]                  # lower nose
    + [45, 44, 43, 42, 47, 46]              # right eye <- left eye
    + [39, 38, 37, 36, 41, 40]              # left eye <- right eye
    + [54, 53, 52, 51, 50, 49, 48]          # outer upper lip
    + [59, 58, 57, 56, 55]                  # outer lower lip
    + [64, 63, 62, 61, 60]                  # inner upper lip
    + [67, 66, 65],                         # inner lower lip
    dtype=np.int64,
)
IBUG68_MIRROR.flags.writeable = False


def mediapipe_to_68(points: np.ndarray) -> np.ndarray:
    """The 68 iBUG landmarks from MediaPipe Face Mesh points.

    Args:
        points: ``(..., 478, D)`` or ``(..., 468, D)`` MediaPipe points (any D, e.g. 2 or 3).

    Returns:
        ``(..., 68, D)`` array of the same dtype (see :data:`MEDIAPIPE_TO_68`).
    """
    array = np.asarray(points)
    if array.ndim < 2 or array.shape[-2] not in (468, 478):
        raise ValueError(
            f"mediapipe_to_68 needs (..., 478, D) or (..., 468, D) points, got {array.shape}"
        )
    return array[..., MEDIAPIPE_TO_68, :]


# --------------------------------------------------------------------------------------------
# Common types
# --------------------------------------------------------------------------------------------


class FaceDetection(NamedTuple):
    """One face in one image.

    Attributes:
        bbox: ``(4,)`` float32 face box (x0, y0, x1, y1) in pixels: the face detector's box,
            or the landmarks' bounding box when the landmarks came without one.
        score: detector confidence in [0, 1] (1.0 for given landmarks).
        landmarks: ``(K, 2)`` float32 (x, y) pixel coordinates in the order of ``scheme``.
        scheme: landmark scheme, ``"mediapipe478"`` or ``"fan68"`` (or a caller's name).
    """

    bbox: np.ndarray
    score: float
    landmarks: np.ndarray
    scheme: str


class FaceSearch(NamedTuple):
    """What :meth:`Landmarker.find_faces` found in one image.

    Attributes:
        faces: the faces kept, largest first, at most ``max_faces``.
        found: faces found before ``max_faces`` was applied (``found - len(faces)`` were
            dropped; for MediaPipe, boxes that were not meshed count as faces).
    """

    faces: list[FaceDetection]
    found: int


@runtime_checkable
class Landmarker(Protocol):
    """Finds faces and their landmarks in an RGB image.

    Attributes:
        name: short name stored in the detection table ("mediapipe", "fan", ...).
        version: version of the underlying package (for the table's detector column).
        scheme: landmark scheme of every detection it returns.
    """

    name: str
    version: str
    scheme: str

    def detect(self, image: np.ndarray, *, image_key: str | None = None) -> list[FaceDetection]:
        """Faces in ``image``, largest first.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            image_key: the image's identity (e.g. its ``image_id``); only landmarkers that
                look landmarks up, such as :class:`GroundTruthLandmarker`, use it.
        """
        ...

    def find_faces(self, image: np.ndarray, *, image_key: str | None = None) -> FaceSearch:
        """As :meth:`detect`, and how many faces there were before ``max_faces``."""
        ...


class MissingWeightsError(FileNotFoundError):
    """Model weights are not in the local cache (nothing is downloaded at run time)."""


class LandmarksNotFoundError(KeyError):
    """A :class:`GroundTruthLandmarker` has no landmarks for the requested image."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def _check_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"image must be (H, W, 3) uint8 RGB, got shape {array.shape} dtype {array.dtype}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image is empty: shape {array.shape}")
    return np.ascontiguousarray(array)


def _check_max_faces(max_faces: int) -> None:
    if max_faces < 1:
        raise ValueError(f"max_faces must be at least 1, got {max_faces}")


def _box_of(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(axis=0), points.max(axis=0)]).astype(np.float32)


def _largest_first(faces: list[FaceDetection], max_faces: int) -> FaceSearch:
    def area(face: FaceDetection) -> float:
        x0, y0, x1, y1 = (float(v) for v in face.bbox)
        return max(x1 - x0, 0.0) * max(y1 - y0, 0.0)

    return FaceSearch(sorted(faces, key=area, reverse=True)[:max_faces], len(faces))


# --------------------------------------------------------------------------------------------
# MediaPipe
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaPipeSettings:
    """Settings of :class:`MediaPipeLandmarker`.

    Attributes:
        max_faces: keep at most this many faces per image (largest first).
        min_detection_confidence: face detector score threshold.
        mesh_crop_size: side in pixels of the square face crop the mesh model runs on.
        mesh_crop_scale: side of that crop relative to the detector box's larger side.
    """

    max_faces: int = 1
    min_detection_confidence: float = 0.5
    mesh_crop_size: int = 384
    mesh_crop_scale: float = 2.0


class MediaPipeLandmarker:
    """MediaPipe face detection + Face Mesh (478 points, refined eyes and lips).

    Uses the legacy ``mp.solutions`` API of mediapipe 0.10.21, whose wheel ships the
    models (``face_detection_full_range_sparse.tflite``, ``face_detection_short_range.tflite``
    and ``face_landmark_with_attention.tflite``), so it runs offline.

    How: the full-range BlazeFace detector finds the faces and gives box and score (measured
    on the astronaut: faces down to about 6% of the image side, while Face Mesh's built-in
    short-range detector already misses them at 10%; the short-range detector is tried only
    when the full-range one finds nothing). Smaller faces need the image tiled or upscaled.
    For each face, Face Mesh (``static_image_mode=True, refine_landmarks=True``) runs on a
    square crop of side ``mesh_crop_scale`` x the box's larger side, resized to
    ``mesh_crop_size``; its points are mapped back to the image. A face whose crop yields no
    mesh is dropped.

    MediaPipe's normalised coordinates put 0 and 1 on the outer edges of the image; they are
    converted to pixel-centre coordinates as ``x * W - 0.5``.

    Thread safety: calls are serialised by a lock; for parallelism use one instance per
    process. Instances pickle (the graphs are rebuilt lazily), so they can be shipped to
    Dask workers.
    """

    name = "mediapipe"
    scheme = "mediapipe478"

    def __init__(self, settings: MediaPipeSettings | None = None) -> None:
        self.settings = settings or MediaPipeSettings()
        _check_max_faces(self.settings.max_faces)
        if not 0.0 <= self.settings.min_detection_confidence <= 1.0:
            raise ValueError(
                "min_detection_confidence must be in [0, 1], "
                f"got {self.settings.min_detection_confidence}"
            )
        if self.settings.mesh_crop_size < 64 or self.settings.mesh_crop_scale <= 1.0:
            raise ValueError("mesh_crop_size must be >= 64 and mesh_crop_scale > 1")
        import mediapipe

        self.version = str(mediapipe.__version__)
        self._lock = threading.Lock()
        self._graphs: dict[str, Any] = {}
        self._warm: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "version": self.version}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.settings = state["settings"]
        self.version = state["version"]
        self._lock = threading.Lock()
        self._graphs = {}
        self._warm = set()

    def __enter__(self) -> MediaPipeLandmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the MediaPipe graphs (they are rebuilt on the next call)."""
        with self._lock:
            for graph in self._graphs.values():
                graph.close()
            self._graphs.clear()
            self._warm.clear()

    def _process(self, kind: str, image: np.ndarray) -> Any:
        """Run graph ``kind``; its construction and first run with the C++ log silenced."""
        if kind in self._warm:
            return self._graphs[kind].process(image)
        with _native_stderr_silenced():
            result = self._graph(kind).process(image)
        self._warm.add(kind)
        return result

    def _graph(self, kind: str) -> Any:
        graph = self._graphs.get(kind)
        if graph is None:
            from mediapipe.python.solutions import face_detection, face_mesh

            confidence = self.settings.min_detection_confidence
            if kind == "mesh":
                graph = face_mesh.FaceMesh(
                    static_image_mode=True, refine_landmarks=True, max_num_faces=1,
                    min_detection_confidence=confidence,
                )
            else:
                graph = face_detection.FaceDetection(
                    model_selection=1 if kind == "full" else 0,
                    min_detection_confidence=confidence,
                )
            self._graphs[kind] = graph
        return graph

    def detect(self, image: np.ndarray, *, image_key: str | None = None) -> list[FaceDetection]:
        """Faces in ``image`` (``(H, W, 3)`` uint8 RGB), largest first; see the class doc."""
        return self.find_faces(image, image_key=image_key).faces

    def find_faces(self, image: np.ndarray, *, image_key: str | None = None) -> FaceSearch:
        """As :meth:`detect`; ``found`` counts the faces meshed and the boxes left unmeshed
        once ``max_faces`` were kept."""
        image = _check_image(image)
        with self._lock:
            boxes = self._detect_boxes(image, "full") or self._detect_boxes(image, "short")
            boxes.sort(key=lambda item: _area(item[0]), reverse=True)
            faces: list[FaceDetection] = []
            tried = 0
            for box, score in boxes:
                tried += 1
                landmarks = self._mesh_in_box(image, box)
                if landmarks is not None:
                    faces.append(FaceDetection(box, score, landmarks, self.scheme))
                if len(faces) == self.settings.max_faces:
                    break
        return FaceSearch(faces, len(faces) + len(boxes) - tried)

    def _detect_boxes(self, image: np.ndarray, kind: str) -> list[tuple[np.ndarray, float]]:
        height, width = image.shape[:2]
        result = self._process(kind, image)
        boxes = []
        for detection in result.detections or []:
            relative = detection.location_data.relative_bounding_box
            x0 = relative.xmin * width - 0.5
            y0 = relative.ymin * height - 0.5
            box = np.array(
                [x0, y0, x0 + relative.width * width, y0 + relative.height * height],
                dtype=np.float32,
            )
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append((box, float(detection.score[0])))
        return boxes

    def _mesh_in_box(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        import cv2

        out = self.settings.mesh_crop_size
        side = max(int(round(self.settings.mesh_crop_scale * float(max(box[2] - box[0],
                                                                         box[3] - box[1])))), 8)
        cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
        height, width = image.shape[:2]
        # Cut [x0, x0 + side) x [y0, y0 + side), zero-padded where it leaves the image.
        region = np.zeros((side, side, 3), dtype=np.uint8)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + side, width), min(y0 + side, height)
        if sx1 <= sx0 or sy1 <= sy0:
            return None
        region[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
        interpolation = cv2.INTER_AREA if side > out else cv2.INTER_LINEAR
        crop = np.ascontiguousarray(cv2.resize(region, (out, out), interpolation=interpolation))
        result = self._process("mesh", crop)
        if not result.multi_face_landmarks:
            return None
        mesh = result.multi_face_landmarks[0].landmark
        normalised = np.array([(point.x, point.y) for point in mesh], dtype=np.float64)
        crop_xy = normalised * out - 0.5  # pixel-centre coordinates in the crop
        # cv2.resize maps pixel centres: x_region = (u + 0.5) * side / out - 0.5.
        image_xy = (crop_xy + 0.5) * (side / out) - 0.5 + np.array([x0, y0])
        return image_xy.astype(np.float32)


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a moment.

    MediaPipe's C++ code (absl logging, TFLite) writes about ten ``W0000 ...`` / ``INFO:``
    lines straight to fd 2 while it builds and first runs a graph; absl ignores
    ``GLOG_minloglevel`` and ``TF_CPP_MIN_LOG_LEVEL``, so the descriptor is redirected. Python
    writes to ``sys.stderr`` in that moment (other threads) are flushed before and after,
    and may be lost; it lasts one graph construction per process.
    """
    with _STDERR_LOCK:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def _area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


# --------------------------------------------------------------------------------------------
# FAN (face-alignment)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FanSettings:
    """Settings of :class:`FanLandmarker` (defaults as in DECA/EMOCA's FAN wrapper).

    Attributes:
        max_faces: keep at most this many faces per image (largest first).
        device: torch device for the networks.
        face_detector: face-alignment's detector module; only ``"sfd"`` is checked offline.
        filter_threshold: SFD score threshold.
        flip_input: also run on the mirrored crop and average (the original: False).
    """

    max_faces: int = 1
    device: str = "cpu"
    face_detector: str = "sfd"
    filter_threshold: float = 0.5
    flip_input: bool = False


def fan_weight_files(face_detector: str = "sfd") -> list[tuple[Path, str]]:
    """The cache files FAN needs: ``[(path, url), ...]`` under ``torch.hub.get_dir()``.

    face-alignment fetches its weights at first use into
    ``<torch hub dir>/checkpoints/<file name of the URL>``; the hub dir is
    ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``).
    """
    import torch.hub
    from face_alignment import api

    if face_detector != "sfd":
        raise ValueError(f"only face_detector='sfd' is supported offline, got {face_detector!r}")
    from face_alignment.detection.sfd import sfd_detector

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    urls = [api.models_urls["2DFAN-4"], sfd_detector.models_urls["s3fd"]]
    return [(checkpoints / os.path.basename(urlparse(url).path), url) for url in urls]


class FanLandmarker:
    """FAN 2D landmarks (68, iBUG) with the SFD face detector, as the paper used.

    The weights are never downloaded: the constructor checks the torch hub cache and raises
    :class:`MissingWeightsError` naming the files, their URLs and the folder when any is
    absent. ``bbox``/``score`` are SFD's; landmarks are face-alignment's (``fan68``).
    """

    name = "fan"
    scheme = "fan68"

    def __init__(self, settings: FanSettings | None = None) -> None:
        self.settings = settings or FanSettings()
        _check_max_faces(self.settings.max_faces)
        files = fan_weight_files(self.settings.face_detector)
        missing = [(path, url) for path, url in files if not path.is_file()]
        if missing:
            folder = missing[0][0].parent
            listing = "; ".join(f"{path.name} from {url}" for path, url in missing)
            raise MissingWeightsError(
                f"FAN weights missing from {folder} (torch.hub.get_dir()/checkpoints; set "
                f"TORCH_HOME to move it): put {listing} there"
            )
        import face_alignment

        self.version = str(getattr(face_alignment, "__version__", "unknown"))
        kwargs: dict[str, Any] = {
            "device": self.settings.device,
            "flip_input": self.settings.flip_input,
            "face_detector": self.settings.face_detector,
            "face_detector_kwargs": {"filter_threshold": self.settings.filter_threshold},
        }
        parameters = inspect.signature(face_alignment.FaceAlignment.__init__).parameters
        if "compile" in parameters:  # face-alignment >= 1.5 compiles by default; not wanted here
            kwargs["compile"] = False
        self._model = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, **kwargs)

    def detect(self, image: np.ndarray, *, image_key: str | None = None) -> list[FaceDetection]:
        """Faces in ``image`` (``(H, W, 3)`` uint8 RGB), largest first."""
        return self.find_faces(image, image_key=image_key).faces

    def find_faces(self, image: np.ndarray, *, image_key: str | None = None) -> FaceSearch:
        """As :meth:`detect`, with the number of faces before ``max_faces``."""
        import warnings

        image = _check_image(image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "No faces were detected." is a result, not a warning
            landmarks, _, boxes = self._model.get_landmarks_from_image(
                image, return_bboxes=True
            )
        if landmarks is None:
            return FaceSearch([], 0)
        faces = []
        for points, box in zip(landmarks, boxes, strict=True):
            box = np.asarray(box, dtype=np.float64).reshape(-1)
            faces.append(FaceDetection(
                box[:4].astype(np.float32), float(box[4]) if box.size > 4 else 1.0,
                np.asarray(points, dtype=np.float32)[:, :2], self.scheme,
            ))
        return _largest_first(faces, self.settings.max_faces)


# --------------------------------------------------------------------------------------------
# Given landmarks
# --------------------------------------------------------------------------------------------


class GroundTruthLandmarker:
    """Landmarks supplied by the caller (dataset annotations, a landmark table, ...).

    Args:
        landmarks: image key -> ``(K, 2)`` landmarks of one face or ``(F, K, 2)`` of F faces,
            in pixels of the image (extra columns such as z are dropped).
        scheme: the landmarks' scheme name (default ``"fan68"``).
        max_faces: keep at most this many faces (largest first).
        allow_missing: return no faces for an unknown key instead of raising.

    ``detect(image, image_key=key)`` returns the key's faces with ``bbox`` = the landmarks'
    bounding box and ``score`` = 1.
    """

    name = "ground_truth"
    version = "1"

    def __init__(
        self,
        landmarks: Mapping[str, np.ndarray],
        scheme: str = "fan68",
        max_faces: int = 1,
        allow_missing: bool = False,
    ) -> None:
        _check_max_faces(max_faces)
        self.scheme = scheme
        self.max_faces = max_faces
        self.allow_missing = allow_missing
        self._landmarks: dict[str, np.ndarray] = {}
        count = None
        for key, value in landmarks.items():
            array = np.asarray(value, dtype=np.float32)
            if array.ndim == 2:
                array = array[None]
            if array.ndim != 3 or array.shape[2] < 2 or array.shape[1] < 2:
                raise ValueError(
                    f"landmarks for {key!r} must be (K, 2) or (F, K, 2), got {array.shape}"
                )
            if count is not None and array.shape[1] != count:
                raise ValueError(
                    f"landmarks for {key!r} have {array.shape[1]} points, others {count}"
                )
            count = array.shape[1]
            self._landmarks[str(key)] = np.ascontiguousarray(array[:, :, :2])

    def __len__(self) -> int:
        return len(self._landmarks)

    def detect(self, image: np.ndarray, *, image_key: str | None = None) -> list[FaceDetection]:
        """The given faces of ``image_key``, largest first (``image`` is only checked)."""
        return self.find_faces(image, image_key=image_key).faces

    def find_faces(self, image: np.ndarray, *, image_key: str | None = None) -> FaceSearch:
        """As :meth:`detect`, with the number of given faces before ``max_faces``."""
        image = _check_image(image)
        if image_key is None:
            raise ValueError("GroundTruthLandmarker.detect needs image_key= to look landmarks up")
        faces_points = self._landmarks.get(str(image_key))
        if faces_points is None:
            if self.allow_missing:
                return FaceSearch([], 0)
            raise LandmarksNotFoundError(f"no landmarks given for image {image_key!r}")
        faces = []
        for points in faces_points:
            if not np.isfinite(points).all():
                continue  # a face without usable annotation is "no face", not a crash
            faces.append(FaceDetection(_box_of(points), 1.0, points.copy(), self.scheme))
        return _largest_first(faces, self.max_faces)


def make_landmarker(name: str, max_faces: int = 1, **settings: Any) -> Landmarker:
    """Build a landmarker by name: ``"mediapipe"`` or ``"fan"`` (settings as in their
    settings classes). :class:`GroundTruthLandmarker` needs its landmarks, so build it
    directly."""
    if name == "mediapipe":
        return MediaPipeLandmarker(MediaPipeSettings(max_faces=max_faces, **settings))
    if name == "fan":
        return FanLandmarker(FanSettings(max_faces=max_faces, **settings))
    raise ValueError(f"unknown landmarker {name!r}: choose 'mediapipe' or 'fan'")
