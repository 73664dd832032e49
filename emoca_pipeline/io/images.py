"""Robust image decoding: every file becomes an RGB uint8 array or a status, never an exception.

A batch over millions of crawled files meets every kind of broken input, so
:func:`read_image` turns each file into a :class:`DecodedImage` whose ``status`` is one word
of a small vocabulary and whose ``reason`` is one line a person can act on:

=================  ===========================================================================
``ok``             decoded; ``image`` is ``(H, W, 3)`` uint8 RGB
``missing``        the path does not exist or cannot be read (permissions, a folder, ...)
``not_a_file``     the path (after following symlinks) is a FIFO, a device or a socket:
                   never opened for reading, so ``/dev/zero`` or a pipe cannot stall a run
``changed``        the file's size or modification time changed while it was read
``empty``          the file has 0 bytes
``too_large``      the file is larger than ``max_bytes`` (checked before reading), or the
                   header declares more than ``max_pixels`` pixels (checked before decoding)
``decode_error``   not an image, an unknown format, a truncated or corrupt file, or a header
                   that declares a zero-sized image
=================  ===========================================================================

Conversions (all to 8-bit RGB, so that every later stage sees one layout):

- EXIF orientation is applied (the array is what a viewer shows).
- Grayscale and 1-bit images are replicated to three channels.
- Alpha (RGBA, LA, palette images with a transparent index) is composited onto black,
  ``rgb * alpha``: fully transparent pixels become black whatever colour they stored, which
  matches the black background of the renderer's photometric loss. (The original DECA/EMOCA
  code drops the alpha channel instead; the two agree wherever alpha is 255.)
- 16-bit samples keep their high byte, ``v >> 8``, which is what Pillow itself does for
  16-bit RGB PNG and TIFF files; 32-bit integer images are clipped to ``[0, 65535]`` first.
  Float images are read as ``[0, 1]`` when their maximum is at most 1, else as ``[0, 255]``.
- CMYK (including Adobe's inverted CMYK JPEGs) and YCbCr/LAB/HSV go through Pillow's
  ``convert("RGB")``; embedded ICC profiles are not applied.
- Multi-frame files (GIF, APNG, multi-page TIFF) give their first frame.

Pillow decodes (only the formats in :data:`PILLOW_FORMATS`); OpenCV is the fallback for files
that Pillow cannot identify or whose pixel layout it does not support (e.g. some TIFF
compressions). ``max_pixels`` is the one pixel limit: Pillow's own decompression-bomb cap
(``PIL.Image.MAX_IMAGE_PIXELS``) is switched off while a header is parsed, and the size it
declares is checked against ``max_pixels`` before any pixel is decoded, so a larger
``max_pixels`` passes Pillow's default cap and a refusal always names ``max_pixels``. Files
that only OpenCV decodes are checked after decoding (OpenCV refuses more than 2**30 pixels
itself).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import stat
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DECODE_STATUSES",
    "PILLOW_FORMATS",
    "DecodedImage",
    "image_id",
    "read_file_bytes",
    "read_image",
]

#: Default pixel limit: 64 MP (8000 x 8000) is above any camera image a face dataset holds
#: and below Pillow's own decompression-bomb warning threshold (89.5 MP).
DEFAULT_MAX_PIXELS = 64_000_000

#: Default file size limit: 512 MiB holds an uncompressed 16-bit RGBA image of 64 MP.
DEFAULT_MAX_BYTES = 512 * 1024 * 1024

#: Every status :func:`read_image` can return.
DECODE_STATUSES = ("ok", "missing", "not_a_file", "changed", "empty", "too_large",
                   "decode_error")

# Image.MAX_IMAGE_PIXELS is process-wide: reads that switch it off take turns.
_PILLOW_CAP_LOCK = threading.Lock()

_EMPTY_IMAGE = np.zeros((0, 0, 3), dtype=np.uint8)
_EMPTY_IMAGE.flags.writeable = False
_MAX_REASON_CHARS = 200

#: Formats Pillow may open. An allow-list, because some of Pillow's other plugins hand the
#: file to external programs (EPS runs Ghostscript) or are rarely images (PDF, ICNS, ...).
#: (Multi-picture camera JPEGs come through the JPEG plugin, as format "MPO".)
PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "JPEG2000", "AVIF")

# Formats where Pillow reads every valid file, so an OpenCV retry is pointless.
_PILLOW_COMPLETE = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP"})

# Leading bytes of the formats we expect, to tell "not an image" from "a broken image".
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class DecodedImage(NamedTuple):
    """The result of decoding one file.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB, C-contiguous; a read-only ``(0, 0, 3)`` array unless
            ``status == "ok"``.
        status: one of :data:`DECODE_STATUSES`.
        reason: one line (at most 200 characters) saying what was wrong; empty when ``ok``
            (or a note such as an unreadable EXIF orientation).
        width: image width in pixels after EXIF orientation; for ``too_large`` and zero-sized
            files the width the header declares; otherwise 0.
        height: image height, as ``width``.
        format: the container format ("JPEG", "PNG", ...) when known, else "".
    """

    image: np.ndarray
    status: str
    reason: str
    width: int
    height: int
    format: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def status_line(self) -> str:
        """``status`` or ``"status: reason"``: the form the detection table stores."""
        if self.status == "ok" or not self.reason:
            return self.status
        return f"{self.status}: {self.reason}"


def image_id(source: str | os.PathLike | bytes) -> str:
    """Stable content hash of an image file: hex BLAKE2b-160 of its bytes (40 characters).

    The same bytes give the same id wherever the file lives, so a renamed or copied file
    keeps its id and rows from different runs join on it.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: ``source`` is not a regular file (a FIFO or a device never ends).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return hashlib.blake2b(source, digest_size=20).hexdigest()
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"image_id: no such file: {path}")
    if not stat.S_ISREG(path.stat().st_mode):
        raise ValueError(f"image_id: {path}: not a regular file")
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_file_bytes(
    path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES
) -> bytes | DecodedImage:
    """The bytes of a regular file, or a failed :class:`DecodedImage` saying why not.

    Nothing that is not a regular file (after following symlinks) is read, and no file over
    ``max_bytes`` is: the type and size are checked before the first byte, on the open
    descriptor too (``O_NONBLOCK``, so a FIFO swapped in after the check cannot block). A
    file whose size or modification time differs after the read is ``changed``.
    """
    path = Path(path)
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            return _failure("missing", "a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            return _failure("not_a_file", f"{_file_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            return _failure("too_large", f"file is {info.st_size} bytes, over "
                            f"max_bytes={max_bytes}")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return _failure("missing", "no such file")
    except OSError as error:
        return _failure("missing", f"cannot read file: {_describe(error)}")
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return _failure("not_a_file", f"{_file_kind(before.st_mode)}, not a regular file")
        if before.st_size > max_bytes:
            return _failure("too_large", f"file is {before.st_size} bytes, over "
                            f"max_bytes={max_bytes}")
        parts, remaining = [], before.st_size + 1  # one byte more: a file that grew shows
        while remaining > 0:
            part = os.read(fd, min(remaining, 1 << 24))
            if not part:
                break
            parts.append(part)
            remaining -= len(part)
        after = os.fstat(fd)
    except OSError as error:
        return _failure("missing", f"cannot read file: {_describe(error)}")
    finally:
        os.close(fd)
    data = b"".join(parts)
    if (len(data) != before.st_size or after.st_size != before.st_size
            or after.st_mtime_ns != before.st_mtime_ns):
        return _failure("changed", f"file changed while it was read ({before.st_size} bytes "
                        f"before, {len(data)} read, {after.st_size} after)")
    return data


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def read_image(
    source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecodedImage:
    """Decode an image file (or its bytes) to RGB uint8; never raises for a bad file.

    Args:
        source: a path, or the file's bytes (read them once with :func:`read_file_bytes`
            to hash and decode both).
        max_pixels: refuse images whose header declares more pixels than this
            (``width * height``), before any pixel data is decoded.
        max_bytes: refuse files larger than this, before reading them (paths only).

    Returns:
        a :class:`DecodedImage`; see the module docstring for the status vocabulary and the
        colour conversions.

    Raises:
        ValueError: ``max_pixels`` is not positive (a caller error, not a file error).
    """
    if max_pixels <= 0:
        raise ValueError(f"read_image: max_pixels must be positive, got {max_pixels}")
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        read = read_file_bytes(source, max_bytes)
        if isinstance(read, DecodedImage):
            return read
        data = read
    try:
        return _decode(data, max_pixels)
    except Exception as error:  # noqa: BLE001 - the contract is "never raises for a bad file"
        return _failure("decode_error", f"unexpected decoder failure: {_describe(error)}")


def _decode(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode with Pillow's pixel cap off: ``max_pixels``, checked on the header's size before
    any pixel is decoded, is the limit (Pillow's default must neither hide nor cap it)."""
    with _PILLOW_CAP_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return _decode_uncapped(data, max_pixels)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _decode_uncapped(data: bytes, max_pixels: int) -> DecodedImage:
    if not data:
        return _failure("empty", "file is empty (0 bytes)")
    sniffed = _sniff_format(data)
    try:
        pil_image = Image.open(io.BytesIO(data), formats=_pillow_formats())
    except UnidentifiedImageError:
        declared = _declared_size(data, sniffed)
        if declared is not None and 0 in declared:
            return _failure("decode_error", f"zero-sized image ({declared[0]}x{declared[1]}) "
                            f"declared in the {sniffed} header", *declared, fmt=sniffed)
        if sniffed in _PILLOW_COMPLETE:
            # OpenCV decodes nothing Pillow cannot in these formats (and would log noise).
            return _failure("decode_error", f"corrupt {sniffed} file: Pillow cannot parse it",
                            fmt=sniffed)
        return _decode_with_opencv(data, max_pixels, sniffed, pillow_error="format not recognised")
    except Exception as error:  # noqa: BLE001 - plugins raise SyntaxError, ValueError, ...
        return _failure("decode_error", f"corrupt header: {_describe(error)}", fmt=sniffed)

    with pil_image:
        fmt = pil_image.format or sniffed
        width, height = pil_image.size
        if width <= 0 or height <= 0:
            return _failure("decode_error", f"zero-sized image ({width}x{height})",
                            width=width, height=height, fmt=fmt)
        if width * height > max_pixels:
            return _failure(
                "too_large",
                f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}",
                width=width, height=height, fmt=fmt,
            )
        try:
            pil_image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            message = _describe(error)
            if _is_unsupported(message):
                return _decode_with_opencv(data, max_pixels, fmt, pillow_error=message)
            return _failure("decode_error", f"truncated or corrupt {fmt or 'image'}: {message}",
                            fmt=fmt)
        note = ""
        try:
            oriented = ImageOps.exif_transpose(pil_image)
        except Exception as error:  # noqa: BLE001 - bad EXIF must not lose a good image
            oriented, note = pil_image, f"EXIF orientation ignored: {_describe(error)}"
        rgb = _to_rgb_uint8(oriented)
    return DecodedImage(rgb, "ok", note, rgb.shape[1], rgb.shape[0], fmt or "")


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> ``(H, W, 3)`` uint8 RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    mode = image.mode
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if mode in ("RGBA", "LA", "RGBa", "La"):
        array = np.asarray(image, dtype=np.uint8)
        color = array[..., :-1].astype(np.uint32)
        if mode in ("RGBA", "LA"):
            # Composite on black: round(c * a / 255) in integers.
            alpha = array[..., -1:].astype(np.uint32)
            color = (color * alpha + 127) // 255
        # "RGBa" / "La" are already premultiplied, i.e. composited on black.
        rgb = color if color.shape[-1] == 3 else np.repeat(color, 3, axis=-1)
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    if mode in ("L", "1"):
        gray = np.asarray(image.convert("L"), dtype=np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        gray = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))
    # CMYK, YCbCr, LAB, HSV, RGBX, I;16 variants Pillow can convert, ...
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _decode_with_opencv(
    data: bytes, max_pixels: int, fmt: str | None, pillow_error: str
) -> DecodedImage:
    """Fallback decoder for formats or layouts Pillow does not handle."""
    import cv2

    fmt = fmt or ""
    buffer = np.frombuffer(data, dtype=np.uint8)
    # ANYDEPTH keeps 16-bit samples (scaled below like Pillow's); COLOR applies EXIF orientation.
    decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if decoded is None or decoded.size == 0:
        if fmt:
            reason = f"corrupt or unsupported {fmt} file ({pillow_error}; OpenCV failed too)"
        else:
            reason = f"not an image: unknown file signature {data[:8]!r}"
        return _failure("decode_error", reason, fmt=fmt)
    height, width = decoded.shape[:2]
    if width * height > max_pixels:
        return _failure(
            "too_large",
            f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}",
            width=width, height=height, fmt=fmt,
        )
    if decoded.dtype == np.uint16:
        decoded = (decoded >> 8).astype(np.uint8)
    elif decoded.dtype != np.uint8:
        values = decoded.astype(np.float64)
        scale = 255.0 if np.nanmax(values) <= 1.0 else 1.0
        decoded = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
    rgb = np.ascontiguousarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB))
    return DecodedImage(rgb, "ok", "", width, height, fmt)


@functools.cache
def _pillow_formats() -> tuple[str, ...]:
    """The allow-listed formats this Pillow build has plugins for."""
    Image.init()
    return tuple(name for name in PILLOW_FORMATS if name in Image.OPEN)


def _sniff_format(data: bytes) -> str | None:
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _declared_size(data: bytes, fmt: str | None) -> tuple[int, int] | None:
    """(width, height) from the fixed-offset header fields of PNG, GIF and BMP files."""
    if fmt == "PNG" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if fmt == "GIF" and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if fmt == "BMP" and len(data) >= 26 and int.from_bytes(data[14:18], "little") >= 40:
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = int.from_bytes(data[22:26], "little", signed=True)
        return abs(width), abs(height)  # negative height = top-down rows
    return None


def _is_unsupported(message: str) -> bool:
    """Pillow's errors for valid files it cannot decode (as opposed to broken files)."""
    lowered = message.lower()
    return any(key in lowered for key in ("unknown raw mode", "not available", "not supported",
                                          "unsupported"))


def _describe(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _failure(
    status: str, reason: str, width: int = 0, height: int = 0, fmt: str | None = None
) -> DecodedImage:
    reason = " ".join(reason.split())
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[: _MAX_REASON_CHARS - 3] + "..."
    return DecodedImage(_EMPTY_IMAGE, status, reason, width, height, fmt or "")
