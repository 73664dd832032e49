"""read_image on a corpus of good, odd and broken files made here; image_id stability."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from emoca_pipeline.io.images import (
    DECODE_STATUSES,
    DecodedImage,
    image_id,
    read_file_bytes,
    read_image,
)

RNG = np.random.default_rng(7)
NOISE = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but carries (almost) no pixel data: a decompression bomb
    as far as the header is concerned."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b""))


def _check_ok(decoded: DecodedImage, height: int, width: int) -> np.ndarray:
    assert decoded.status == "ok", decoded.status_line
    assert decoded.image.dtype == np.uint8
    assert decoded.image.shape == (height, width, 3)
    assert decoded.image.flags.c_contiguous
    assert (decoded.width, decoded.height) == (width, height)
    return decoded.image.astype(np.int64)


# --- the broken files ---------------------------------------------------------------------


def _jpeg() -> bytes:
    return _save(Image.fromarray(NOISE), "JPEG", quality=90)


def _png() -> bytes:
    return _save(Image.fromarray(NOISE), "PNG")


BROKEN = {
    # name: (bytes, expected status, a word the reason must contain)
    "truncated_jpeg": (_jpeg()[: len(_jpeg()) // 2], "decode_error", "truncated"),
    "truncated_png": (_png()[: len(_png()) // 2], "decode_error", "truncated"),
    "png_cut_in_header": (_png()[:30], "decode_error", "PNG"),
    "empty": (b"", "empty", "0 bytes"),
    "random_bytes": (RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "decode_error",
                     "not an image"),
    "text_named_jpg": (b"name,label\nface.jpg,happy\n" * 20, "decode_error", "not an image"),
    # Pillow could open this with its EPS plugin, which runs Ghostscript: not allowed.
    "postscript": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n",
                   "decode_error", "not an image"),
    "zero_width_png": (_png_header_only(0, 5), "decode_error", "zero-sized"),
    "zero_height_gif": (b"GIF89a" + struct.pack("<HH", 7, 0) + b"\x00\x00\x00;",
                        "decode_error", "zero-sized"),
    # above Pillow's own hard limit (2 * 89.5 MP): Pillow refuses it at open
    "bomb_10_gigapixels": (_png_header_only(100_000, 100_000), "too_large", "pixels"),
    # under Pillow's limits, over our default 64 MP: our header check refuses it
    "bomb_81_megapixels": (_png_header_only(9000, 9000), "too_large", "max_pixels"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_get_a_status_not_an_exception(tmp_path: Path, name: str) -> None:
    data, status, word = BROKEN[name]
    path = tmp_path / f"{name} é.jpg"  # a space and a non-ASCII character in the name
    path.write_bytes(data)
    for source in (path, str(path), data):
        decoded = read_image(source)
        assert decoded.status == status, decoded.status_line
        assert word.lower() in decoded.reason.lower(), decoded.reason
        assert "\n" not in decoded.reason and len(decoded.reason) <= 200
        assert decoded.image.shape == (0, 0, 3) and decoded.image.dtype == np.uint8
        assert decoded.status_line == f"{status}: {decoded.reason}"
        assert not decoded.ok


def test_too_large_reports_the_declared_size() -> None:
    decoded = read_image(_png_header_only(9000, 9000))
    assert (decoded.width, decoded.height) == (9000, 9000)
    decoded = read_image(_png_header_only(100_000, 100_000))
    assert (decoded.width, decoded.height) == (100_000, 100_000)
    # The limit is configurable; a real image over a small limit is refused before decoding.
    small = read_image(_png(), max_pixels=64 * 48 - 1)
    assert small.status == "too_large" and (small.width, small.height) == (64, 48)
    assert read_image(_png(), max_pixels=64 * 48).status == "ok"


def test_missing_paths(tmp_path: Path) -> None:
    assert read_image(tmp_path / "nope.jpg").status == "missing"
    assert read_image(tmp_path).status == "missing"  # a folder is not a file
    with pytest.raises(ValueError, match="max_pixels"):
        read_image(_png(), max_pixels=0)


def test_max_pixels_is_the_only_pixel_limit() -> None:
    """Pillow's own cap (2 x 89.5 MP) neither names the refusal nor stops a larger limit."""
    from PIL import Image

    cap = Image.MAX_IMAGE_PIXELS
    bomb = _png_header_only(15_000, 15_000)  # 225 MP: over Pillow's hard limit
    refused = read_image(bomb)
    assert refused.status == "too_large" and "max_pixels=64000000" in refused.reason
    assert (refused.width, refused.height) == (15_000, 15_000)
    # With a larger limit the header passes and decoding starts (this file has no pixels).
    allowed = read_image(bomb, max_pixels=300_000_000)
    assert allowed.status == "decode_error" and "truncated" in allowed.reason
    assert Image.MAX_IMAGE_PIXELS == cap  # restored


def test_special_files_are_never_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    (tmp_path / "zero.png").symlink_to("/dev/zero")  # reading it would never end
    for path, kind in ((fifo, "FIFO"), (tmp_path / "zero.png", "character device")):
        decoded = read_image(path)
        assert decoded.status == "not_a_file" and kind in decoded.reason
        assert read_file_bytes(path).status == "not_a_file"
        with pytest.raises(ValueError, match="not a regular file"):
            image_id(path)
    big = tmp_path / "big.png"
    big.write_bytes(_png())
    assert read_image(big, max_bytes=100).status == "too_large"
    assert "max_bytes=100" in read_image(big, max_bytes=100).reason
    assert read_file_bytes(big) == _png()


def test_a_file_that_changes_while_read(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "growing.png"
    path.write_bytes(_png())
    real_read = os.read

    def read_then_append(fd: int, size: int) -> bytes:
        part = real_read(fd, size)
        with open(path, "ab") as f:  # a writer appends while we read
            f.write(b"\x00" * 10)
        return part

    monkeypatch.setattr(os, "read", read_then_append)
    decoded = read_image(path)
    assert decoded.status == "changed" and "changed while it was read" in decoded.reason


# --- odd but valid files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
     ("WEBP", {"lossless": True})],
)
def test_lossless_formats_decode_exactly(fmt: str, kwargs: dict) -> None:
    decoded = read_image(_save(Image.fromarray(NOISE), fmt, **kwargs))
    assert decoded.format == fmt
    np.testing.assert_array_equal(_check_ok(decoded, 48, 64), NOISE)


def test_jpeg_and_lossy_webp_decode_close() -> None:
    smooth = cv2.GaussianBlur(NOISE, (0, 0), 3)
    for fmt in ("JPEG", "WEBP"):
        decoded = read_image(_save(Image.fromarray(smooth), fmt, quality=95))
        assert np.abs(_check_ok(decoded, 48, 64) - smooth).mean() < 3, fmt


def test_grayscale_and_one_bit() -> None:
    gray = NOISE[..., 0]
    pixels = _check_ok(read_image(_save(Image.fromarray(gray), "PNG")), 48, 64)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], gray)
    bits = _check_ok(read_image(_save(Image.fromarray(gray > 127), "PNG")), 48, 64)
    np.testing.assert_array_equal(bits[..., 1], np.where(gray > 127, 255, 0))


def test_sixteen_bit_keeps_the_high_byte() -> None:
    gray16 = RNG.integers(0, 65536, (48, 64), dtype=np.uint16)
    pixels = _check_ok(read_image(cv2.imencode(".png", gray16)[1].tobytes()), 48, 64)
    np.testing.assert_array_equal(pixels[..., 0], gray16 >> 8)
    rgb16 = RNG.integers(0, 65536, (48, 64, 3), dtype=np.uint16)
    for extension in (".png", ".tiff"):
        bgr16 = np.ascontiguousarray(rgb16[..., ::-1])
        pixels = _check_ok(read_image(cv2.imencode(extension, bgr16)[1].tobytes()), 48, 64)
        np.testing.assert_array_equal(pixels, rgb16 >> 8)


def test_rgba_is_composited_on_black() -> None:
    rgba = RNG.integers(0, 256, (48, 64, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    pixels = _check_ok(read_image(_save(Image.fromarray(rgba, "RGBA"), "PNG")), 48, 64)
    expected = np.round(rgba[..., :3] * (rgba[..., 3:] / 255.0))
    assert np.abs(pixels - expected).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(pixels[0, 0], 0)
    np.testing.assert_array_equal(pixels[0, 1], rgba[0, 1, :3])


def test_palette_with_transparent_index() -> None:
    indices = np.zeros((48, 64), dtype=np.uint8)
    indices[:, 32:] = 1
    image = Image.fromarray(indices, "P")
    image.putpalette([200, 10, 10, 10, 200, 10] + [0] * 762)
    data = _save(image, "PNG", transparency=1)  # index 1 (green) is fully transparent
    pixels = _check_ok(read_image(data), 48, 64)
    np.testing.assert_array_equal(pixels[:, :32], np.broadcast_to([200, 10, 10], (48, 32, 3)))
    np.testing.assert_array_equal(pixels[:, 32:], 0)


def test_cmyk_jpeg_converts_to_rgb() -> None:
    cmyk = np.zeros((48, 64, 4), dtype=np.uint8)
    cmyk[:, :32, 0] = 255  # cyan
    cmyk[:, 32:, 1] = 255  # magenta
    decoded = read_image(_save(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95))
    pixels = _check_ok(decoded, 48, 64)
    assert decoded.format == "JPEG"
    assert np.abs(pixels[8:40, 4:28] - [0, 255, 255]).max() < 12
    assert np.abs(pixels[8:40, 36:60] - [255, 0, 255]).max() < 12


def test_exif_orientation_is_applied() -> None:
    # Stored landscape, left half red, right half blue; orientation 6 = "rotate 90 degrees
    # clockwise to display", so the viewer sees a portrait image with red on top.
    stored = np.zeros((40, 80, 3), dtype=np.uint8)
    stored[:, :40] = (220, 20, 20)
    stored[:, 40:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _save(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    raw = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int64)
    pixels = _check_ok(read_image(data), 80, 40)
    np.testing.assert_array_equal(pixels, np.rot90(raw, k=-1))
    assert pixels[:36, :, 0].min() > 150 and pixels[:36, :, 2].max() < 100  # red on top
    assert pixels[44:, :, 2].min() > 150 and pixels[44:, :, 0].max() < 100  # blue below


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.fromarray(np.full((48, 64, 3), value, np.uint8)) for value in (30, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    pixels = _check_ok(read_image(buffer.getvalue()), 48, 64)
    assert np.abs(pixels - 30).max() <= 2


# --- image_id -----------------------------------------------------------------------------


def test_image_id_is_a_stable_content_hash(tmp_path: Path) -> None:
    data = _png()
    first, copy = tmp_path / "a.png", tmp_path / "sub dir" / "b ü.png"
    copy.parent.mkdir()
    first.write_bytes(data)
    copy.write_bytes(data)
    identity = image_id(first)
    assert len(identity) == 40 and int(identity, 16) >= 0
    assert image_id(copy) == identity == image_id(data) == image_id(str(first))
    assert image_id(data + b"\x00") != identity
    assert image_id(b"") == "3345524abf6bbe1809449224b5972c41790b6cf2"  # blake2b-160 of b""
    with pytest.raises(FileNotFoundError, match="no such file"):
        image_id(tmp_path / "missing.png")


def test_status_vocabulary_is_closed() -> None:
    seen = {read_image(data).status for data, _, _ in BROKEN.values()} | {"ok", "missing"}
    assert seen <= set(DECODE_STATUSES)
