"""Images in the head's UV layout: face masks, albedo model, fixed detail displacement.

Every texel is mapped back to the head's grid coordinates ``(s, phi)`` (the inverse of the
OBJ's texture coordinates: u follows the column, v the row; image row 0 is v = 1), where the
face regions are defined: the eye openings and lips are bands of rows, the brows and hairline
are curves of polar angle. So the painted regions land on the geometry they describe.

The albedo follows FLAME_texture.npz (DECA's ``FLAMETex``): ``mean`` (512, 512, 3) and
``tex_dir`` (512, 512, 3, 200), in 0..255 units, channels in BGR order (DECA divides by 255
and swaps to RGB). The first basis components are named, regional changes
(:data:`TEXTURE_COMPONENTS`); the rest are smooth local blobs with decaying standard deviation.
Each component is exactly zero away from its region, so the large file compresses well.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from emoca_pipeline.assets.head import (
    EYE_ROWS,
    HEAD_V_TOP,
    MOUTH_ROWS,
    NUM_ROWS,
    HeadLayout,
    column_phi,
    row_thetas,
)

__all__ = [
    "ALBEDO_SIZE",
    "AlbedoBasis",
    "DISPLACEMENT_SIZE",
    "NUM_TEXTURE_COMPONENTS",
    "TEXTURE_COMPONENTS",
    "UVMaps",
    "build_uv_maps",
    "texel_coordinates",
]

ALBEDO_SIZE = 512
DISPLACEMENT_SIZE = 256
NUM_TEXTURE_COMPONENTS = 200
TEXTURE_COMPONENTS = (
    "skin_lightness", "skin_redness", "skin_yellowness", "lip_colour", "brow_darkness",
    "hair_colour", "cheek_flush", "beard_shadow", "iris_colour", "eye_shadow",
)


class UVMaps(NamedTuple):
    """The UV-space assets.

    Attributes:
        face_mask: (512, 512) uint8, 255 on the face skin (eye openings excluded).
        face_eye_mask: (512, 512) uint8, 255 on the face including the eyes.
        albedo_mean: (512, 512, 3) float32, 0..255, BGR; or None.
        albedo_basis: the (512, 512, 3, 200) float32 basis, 0..255 per unit coefficient,
            BGR, as an :class:`AlbedoBasis` (built on demand); or None.
        displacement: (256, 256) float32 fixed detail displacement (m).
    """

    face_mask: np.ndarray
    face_eye_mask: np.ndarray
    albedo_mean: np.ndarray | None
    albedo_basis: AlbedoBasis | None
    displacement: np.ndarray


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step from 0 (x << 0) to 1 (x >> 0) over ``width``."""
    return _smoothstep(x / width + 0.5)


def texel_coordinates(size: int, layout: HeadLayout) -> dict[str, np.ndarray]:
    """Grid coordinates of the texel centres of a square UV image.

    Returns:
        ``s``, ``phi``, ``theta`` (size, size) float64 (NaN outside the head's UV region),
        ``head`` (size, size) bool, and ``eyeball_polar`` (size, size) float64 polar angle in
        degrees from an eyeball's front pole (NaN outside the eyeball strip).
    """
    centres = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(centres, 1.0 - centres, indexing="xy")
    head = v <= HEAD_V_TOP
    s = (1.0 - v / HEAD_V_TOP) * (NUM_ROWS + 1.0) - 1.0
    phi = column_phi(u * layout.num_cols, layout)
    # theta: the rows' angles per image column, interpolated at each image row's s
    rows = row_thetas(phi[0], layout)  # (size, R)
    padded = np.concatenate([np.zeros((size, 1)), rows, np.full((size, 1), 180.0)], axis=1)
    pos = np.clip(s[:, 0] + 1.0, 0.0, NUM_ROWS + 1.0)
    lo = np.minimum(np.floor(pos).astype(np.int64), NUM_ROWS)
    w = (pos - lo)[:, None]
    theta = (1.0 - w) * padded[:, lo].T + w * padded[:, lo + 1].T
    strip = v >= HEAD_V_TOP + 0.01
    polar = (1.0 - (v - HEAD_V_TOP - 0.01) / (1.0 - HEAD_V_TOP - 0.01)) * 180.0
    nan = np.nan
    return {
        "s": np.where(head, s, nan),
        "phi": np.where(head, phi, nan),
        "theta": np.where(head, theta, nan),
        "head": head,
        "eyeball_polar": np.where(strip, polar, nan),
    }


class _Regions:
    """Soft (0..1) region maps on a texel grid."""

    def __init__(self, size: int, layout: HeadLayout) -> None:
        c = texel_coordinates(size, layout)
        self.size = size
        self.head = c["head"]
        s, phi, theta = (np.nan_to_num(c[k]) for k in ("s", "phi", "theta"))
        aphi = np.abs(phi)
        h = self.head.astype(np.float64)
        du = 1.0 / size * layout.num_cols  # one texel in columns
        ds = (NUM_ROWS + 1.0) / (HEAD_V_TOP * size)  # one texel in rows

        # eye openings: rows between the lid margins, between the corners
        side = np.where(phi >= 0.0, 1.0, -1.0)
        e_out = (phi - side * layout.eye_phi) / layout.eye_half_width * side
        a, b = EYE_ROWS[0], EYE_ROWS[-1]
        self.eye_opening = (h * _ramp(s - a, ds) * _ramp(b - s, ds)
                            * _ramp(1.0 - np.abs(e_out), 0.02))
        # position on the eyeball: angular distance from the eye centre
        d_phi = (phi - side * layout.eye_phi) * np.sin(np.radians(theta))
        d_theta = theta - layout.eye_theta
        self.eye_distance = np.hypot(d_phi, d_theta)  # degrees
        self.lid_margin = h * (np.exp(-0.5 * ((s - a) / 0.18) ** 2)
                               + 0.5 * np.exp(-0.5 * ((s - b) / 0.15) ** 2)) * _ramp(
            1.05 - np.abs(e_out), 0.1)
        self.eye_surround = h * np.exp(-0.5 * (aphi - layout.eye_phi) ** 2 / 9.0**2
                                       - 0.5 * (theta - layout.eye_theta + 2.0) ** 2 / 5.0**2)

        # lips: rows between the vermilion borders, inside the corners
        ub, _, u, p1, p2, lo, _, lb = MOUTH_ROWS
        m = np.abs(phi) / layout.mouth_half_width
        within = _ramp(1.0 - m, 0.04)
        self.lips = h * _ramp(s - ub, 0.6) * _ramp(lb - s, 0.6) * within
        self.mouth_inside = h * _ramp(s - u, ds) * _ramp(lo - s, ds) * within
        self.cavity = h * _ramp(s - p1, ds) * _ramp(p2 - s, ds) * within

        # brows: a band above the brow ridge line, thinning outwards
        brow_line = 60.5 + 0.0035 * (aphi - 18.0) ** 2
        taper = 1.0 - 0.55 * _smoothstep((aphi - 10.0) / 28.0)
        self.brows = h * (_ramp(theta - (brow_line - 1.2 - 2.2 * taper), 0.6)
                          * _ramp(brow_line + 0.9 - theta, 0.6)
                          * _ramp(aphi - 8.5, 1.5) * _ramp(37.0 - aphi, 3.0))

        # hair: above the hairline; the line drops over the temples and to the nape at the back
        hairline = np.interp(aphi, [0.0, 30.0, 60.0, 80.0, 95.0, 120.0, 180.0],
                             [44.0, 46.0, 52.0, 66.0, 76.0, 108.0, 118.0])
        self.hair = h * _ramp(hairline - theta, 2.0) * (1.0 - _ramp(
            np.exp(-0.5 * ((aphi - 91.0) / 5.0) ** 2 - 0.5 * ((theta - 84.0) / 11.0) ** 2)
            - 0.4, 0.2))  # not over the ears

        # face: forehead to chin, ear to ear
        jaw = np.interp(aphi, [0.0, 25.0, 50.0, 70.0, 80.0], [141.0, 139.0, 133.0, 122.0, 112.0])
        top = np.interp(aphi, [0.0, 30.0, 60.0, 80.0], [47.0, 49.0, 56.0, 70.0])
        self.face = h * (theta > top) * (theta < jaw) * (aphi < 80.0)

        self.cheeks = h * np.exp(-0.5 * ((aphi - 36.0) / 10.0) ** 2
                                 - 0.5 * ((theta - 96.0) / 9.0) ** 2)
        self.beard = h * _ramp(theta - 100.0, 6.0) * _ramp(145.0 - theta, 6.0) * _ramp(
            75.0 - aphi, 10.0) * (1.0 - self.lips)
        self.nostrils = h * np.exp(-0.5 * ((aphi - 5.5) / 2.0) ** 2
                                   - 0.5 * ((theta - 98.5) / 1.2) ** 2)
        self.skin = h * (1.0 - self.eye_opening)
        self.polar = c["eyeball_polar"]
        self.strip = ~np.isnan(self.polar)
        self.du, self.ds = du, ds


def _masks(reg: _Regions) -> tuple[np.ndarray, np.ndarray]:
    face = reg.face > 0.5
    eyes = (reg.eye_opening > 0.05) | (ndimage.binary_dilation(reg.eye_opening > 0.5,
                                                               iterations=2) & face)
    eyes = eyes | reg.strip  # the eyeballs' own UV strip
    face_mask = face & ~eyes
    face_eye_mask = face | eyes
    return (face_mask * np.uint8(255)).astype(np.uint8), (face_eye_mask * np.uint8(255)).astype(
        np.uint8)


def _colour(rgb: tuple[float, float, float]) -> np.ndarray:
    return np.array(rgb, dtype=np.float64)


def _albedo_mean(reg: _Regions, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) RGB in 0..255."""
    size = reg.size
    skin = _colour((198.0, 146.0, 122.0))
    img = np.broadcast_to(skin, (size, size, 3)).copy()
    # gentle, smooth skin-tone variation
    noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), 12.0)
    img += (noise / (np.abs(noise).max() + 1e-12) * 6.0)[..., None]

    def paint(weight: np.ndarray, rgb: tuple[float, float, float]) -> None:
        nonlocal img
        w = np.clip(weight, 0.0, 1.0)[..., None]
        img = img * (1.0 - w) + _colour(rgb) * w

    paint(0.35 * reg.cheeks, (214.0, 128.0, 112.0))
    paint(0.25 * reg.beard, (170.0, 130.0, 115.0))
    paint(0.6 * reg.nostrils, (90.0, 50.0, 45.0))
    paint(0.85 * reg.lips, (176.0, 92.0, 92.0))
    paint(reg.mouth_inside, (140.0, 62.0, 66.0))
    paint(reg.cavity, (45.0, 18.0, 22.0))
    paint(0.9 * reg.brows, (62.0, 44.0, 34.0))
    paint(reg.hair, (58.0, 42.0, 32.0))
    paint(0.25 * reg.eye_surround, (160.0, 112.0, 100.0))
    # eyes: sclera, iris, pupil on the visible eyeball, dark lid margins
    eye = reg.eye_opening
    paint(eye, (232.0, 226.0, 218.0))
    paint(eye * _ramp(3.9 - reg.eye_distance, 0.4), (92.0, 110.0, 128.0))
    paint(eye * _ramp(1.6 - reg.eye_distance, 0.3), (18.0, 16.0, 16.0))
    paint(0.8 * reg.lid_margin, (50.0, 36.0, 32.0))
    # the eyeballs' own strip: white with an iris and a pupil around the front pole
    polar = np.nan_to_num(reg.polar, nan=180.0)
    strip = reg.strip.astype(np.float64)
    paint(strip, (232.0, 226.0, 218.0))
    paint(strip * _ramp(24.0 - polar, 2.0), (92.0, 110.0, 128.0))
    paint(strip * _ramp(10.0 - polar, 2.0), (18.0, 16.0, 16.0))
    outside = ~(reg.head | reg.strip)
    img[outside] = skin
    return np.clip(img, 0.0, 255.0)


def _named_components(reg: _Regions) -> list[np.ndarray]:
    """(H, W, 3) RGB directions of the named texture components, 0..255 units."""
    skin = reg.skin * (1.0 - reg.hair) * (1.0 - reg.cavity)

    def tint(weight: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
        return weight[..., None] * _colour(rgb)

    iris = reg.eye_opening * _ramp(3.9 - reg.eye_distance, 0.4) * _ramp(
        reg.eye_distance - 1.6, 0.3)
    return [
        tint(skin, (16.0, 14.0, 13.0)),  # skin_lightness
        tint(skin, (7.0, -2.0, -2.5)),  # skin_redness
        tint(skin, (3.0, 2.0, -5.0)),  # skin_yellowness
        tint(reg.lips, (12.0, -6.0, -2.0)),  # lip_colour
        tint(reg.brows, (-20.0, -16.0, -13.0)),  # brow_darkness
        tint(reg.hair + 0.5 * reg.brows, (18.0, 14.0, 10.0)),  # hair_colour
        tint(reg.cheeks, (14.0, -4.0, -3.0)),  # cheek_flush
        tint(reg.beard, (-12.0, -10.0, -6.0)),  # beard_shadow
        tint(iris, (-20.0, 4.0, 26.0)),  # iris_colour
        tint(reg.eye_surround * (1.0 - reg.eye_opening), (-10.0, -9.0, -6.0)),  # eye_shadow
    ]


def _quantise(values: np.ndarray) -> np.ndarray:
    """Round to 1/16 of a grey level: invisible, but it leaves exact zeros in the tails and
    repeated values, which is what lets the 600 MB basis compress to some 20 MB."""
    return (np.round(values * 16.0) / 16.0).astype(np.float32)


_SKIN_DIRECTIONS = np.array([[1.0, 0.92, 0.85], [1.0, -0.35, -0.35], [0.4, 0.3, -0.7]])  # RGB


class AlbedoBasis:
    """The (512, 512, 3, 200) float32 texture basis, produced band of rows by band of rows.

    The full array is 600 MB; :meth:`rows` builds any band of image rows from the compact
    description (named components as images, the other components as small blobs), so a
    writer can stream it. :meth:`to_array` builds the whole.
    """

    def __init__(self, size: int, named: list[np.ndarray],
                 blobs: list[tuple[int, int, int, np.ndarray]]) -> None:
        self.shape = (size, size, 3, NUM_TEXTURE_COMPONENTS)
        self.dtype = np.dtype(np.float32)
        self._named = named  # (size, size, 3) float32 BGR, component k = index
        self._blobs = blobs  # (component, top row, left column, (h, w, 3) float32 BGR)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Image rows ``start:stop`` of the basis: (stop - start, size, 3, 200) float32."""
        size = self.shape[0]
        if not 0 <= start <= stop <= size:
            raise ValueError(f"rows: need 0 <= start <= stop <= {size}, got {start}, {stop}")
        band = np.zeros((stop - start,) + self.shape[1:], dtype=np.float32)
        for k, image in enumerate(self._named):
            band[:, :, :, k] = image[start:stop]
        for k, top, left, values in self._blobs:
            y0, y1 = max(top, start), min(top + values.shape[0], stop)
            if y0 < y1:
                band[y0 - start:y1 - start, left:left + values.shape[1], :, k] = values[
                    y0 - top:y1 - top]
        return band

    def to_array(self) -> np.ndarray:
        return self.rows(0, self.shape[0])


def _albedo_basis(reg: _Regions, rng: np.random.Generator) -> AlbedoBasis:
    """The named regional components, then local blobs: centres on the head (mostly the
    face), shrinking and fading; each exactly zero beyond three standard deviations."""
    size = reg.size
    named = [_quantise(comp[:, :, ::-1]) for comp in _named_components(reg)]
    face_texels = np.argwhere(reg.face > 0.5)
    head_texels = np.argwhere(reg.head)
    count = NUM_TEXTURE_COMPONENTS - len(named)
    blobs = []
    for i in range(count):
        frac = i / count
        sigma = 22.0 - 17.0 * frac  # texels
        pool = face_texels if rng.random() < 0.8 else head_texels
        cy, cx = pool[rng.integers(pool.shape[0])]
        radius = int(np.ceil(3.0 * sigma))
        y0, y1 = max(cy - radius, 0), min(cy + radius + 1, size)
        x0, x1 = max(cx - radius, 0), min(cx + radius + 1, size)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        blob = np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / sigma**2)
        blob[blob < np.exp(-4.5)] = 0.0  # compact support
        # skin varies along lightness, redness and yellowness, not in arbitrary hues
        rgb = _SKIN_DIRECTIONS.T @ (rng.normal(size=3) * np.array([1.0, 0.35, 0.25]))
        rgb *= (10.0 - 7.0 * frac) / (np.abs(rgb).max() + 1e-12)
        values = blob[..., None] * rgb[::-1] * reg.head[y0:y1, x0:x1, None]
        blobs.append((len(named) + i, int(y0), int(x0), _quantise(values)))
    return AlbedoBasis(size, named, blobs)


def _displacement(layout: HeadLayout, rng: np.random.Generator) -> np.ndarray:
    """(256, 256) fine skin relief on the face: pores, forehead lines, crow's feet (m)."""
    reg = _Regions(DISPLACEMENT_SIZE, layout)
    c = texel_coordinates(DISPLACEMENT_SIZE, layout)
    theta, phi = np.nan_to_num(c["theta"]), np.nan_to_num(c["phi"])
    pores = ndimage.gaussian_filter(rng.normal(size=(DISPLACEMENT_SIZE,) * 2), 1.0)
    pores /= np.abs(pores).max() + 1e-12
    forehead = np.sin(np.radians(theta) * 220.0) * _ramp(theta - 46.0, 3.0) * _ramp(
        56.0 - theta, 3.0) * _ramp(30.0 - np.abs(phi), 6.0)
    crows = np.sin(np.arctan2(theta - layout.eye_theta, np.abs(phi) - 32.0) * 9.0) * np.exp(
        -0.5 * ((np.abs(phi) - 34.0) / 3.0) ** 2 - 0.5 * ((theta - layout.eye_theta) / 4.0) ** 2)
    face = ndimage.gaussian_filter(reg.face.astype(np.float64), 2.0)
    out = (0.00012 * pores + 0.00015 * forehead + 0.0001 * crows) * face
    return out.astype(np.float32)


def build_uv_maps(
    layout: HeadLayout,
    rng_albedo: np.random.Generator,
    rng_displacement: np.random.Generator,
    albedo: bool = True,
) -> UVMaps:
    """Masks, albedo model and fixed displacement in the UV layout of ``layout``'s mesh.

    Args:
        layout: the head's proportions.
        rng_albedo: draws of the albedo mean's skin noise and of the basis blobs.
        rng_displacement: draws of the displacement's pore noise.
        albedo: build the albedo mean and basis; without it both are None.
    """
    reg = _Regions(ALBEDO_SIZE, layout)
    face_mask, face_eye_mask = _masks(reg)
    mean = basis = None
    if albedo:
        mean = _albedo_mean(reg, rng_albedo)[:, :, ::-1].astype(np.float32)  # stored as BGR
        basis = _albedo_basis(reg, rng_albedo)
    return UVMaps(face_mask, face_eye_mask, mean, basis, _displacement(layout, rng_displacement))
