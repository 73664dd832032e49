"""Identity and expression blend shapes of the procedural head (FLAME: 300 + 100).

A coefficient of 1 is one standard deviation of the population, as in FLAME's PCA spaces;
it moves the surface by a few millimetres, less for later components.

Identity (300): smooth fields over the whole head. The first ones are named global traits
(:data:`IDENTITY_COMPONENTS`: width, face length, depth, jaw width, nose size, ...); then
smooth random fields of decreasing length scale (6 cm down to about 1.7 cm) and decaying
standard deviation, mostly mirror-symmetric. The 300 directions are made orthogonal (in the
order given) so that the space behaves like a PCA basis. The eyeballs move rigidly with the
eye region.

Expression (100): localised fields on the face. The first ones are named actions
(:data:`EXPRESSION_COMPONENTS`): the jaw drop, smiles, frowns, brows, eyelids ...; then
random localised fields with decaying standard deviation. The eyelid components slide the
upper lid along the surface onto the lower lid: coefficient :data:`EYELID_CLOSED_AT` closes
the eyes. The eyeballs do not move.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from emoca_pipeline.assets.head import EYE_ROWS, MOUTH_ROWS, HeadMesh, surface_points
from emoca_pipeline.assets.rig import JAW, Rig

__all__ = [
    "EXPRESSION_COMPONENTS",
    "EYELID_CLOSED_AT",
    "IDENTITY_COMPONENTS",
    "NUM_EXPRESSION",
    "NUM_IDENTITY",
    "expression_basis",
    "identity_basis",
]

NUM_IDENTITY = 300
NUM_EXPRESSION = 100
EYELID_CLOSED_AT = 3.0  # expression coefficient at which the eyelid components close the eyes

IDENTITY_COMPONENTS = (
    "head_width", "face_length", "head_depth", "jaw_width", "nose_size", "brow_ridge",
    "cheek_fullness", "forehead_slope", "chin_prominence", "eye_spacing", "lip_fullness",
    "cranium_height",
)
# largest vertex displacement (m) of one standard deviation of each named identity component
_IDENTITY_SPREAD = np.array([0.004, 0.004, 0.004, 0.003, 0.003, 0.002, 0.0025, 0.003, 0.003,
                             0.002, 0.0015, 0.003])
EXPRESSION_COMPONENTS = (
    "jaw_drop", "smile", "mouth_stretch", "frown", "lip_pucker", "lip_press", "brow_raise",
    "brow_lower", "inner_brow_raise", "eyes_close", "cheek_raise", "nose_wrinkle",
    "upper_lip_raise", "lower_lip_depress", "smile_asymmetric", "eye_wink", "jaw_sideways",
    "cheek_puff", "mouth_sideways", "chin_raise", "lip_roll", "nostril_flare", "eyes_wide",
    "lip_corner_dimple", "brow_asymmetric",
)


def _gauss(x: np.ndarray, sigma: float | np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * (x / sigma) ** 2)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _normalise(field: np.ndarray, amplitude: float) -> np.ndarray:
    """Scale a (V, 3) field so that its largest vertex displacement is ``amplitude``."""
    peak = np.linalg.norm(field, axis=1).max()
    return field * (amplitude / peak) if peak > 0 else field


def _mirror(field_fn, verts: np.ndarray) -> np.ndarray:
    """Mirror-symmetric part of a vector field: (f(p) + M f(M p)) / 2, M flips x."""
    flip = np.array([-1.0, 1.0, 1.0])
    return 0.5 * (field_fn(verts) + field_fn(verts * flip) * flip)


def _orthonormalise(matrix: np.ndarray) -> np.ndarray:
    """Gram-Schmidt of the columns in order (each keeps its sense), by Cholesky QR done twice
    (the second pass restores orthogonality to machine precision); 4x faster than a QR."""
    q = matrix
    for _ in range(2):
        lower = np.linalg.cholesky(q.T @ q)
        inverse = scipy.linalg.solve_triangular(lower, np.eye(lower.shape[0]), lower=True)
        q = q @ inverse.T
    return q


def _random_smooth_fields(
    rng: np.random.Generator, anchors: np.ndarray, points: np.ndarray, scales: np.ndarray,
    symmetric: np.ndarray, bumps: int = 10,
) -> np.ndarray:
    """Random smooth vector fields at ``points``: (P, 3, K) for K length ``scales``.

    Each field is a sum of ``bumps`` Gaussian bumps centred on random ``anchors`` with random
    vector weights; where ``symmetric``, it is replaced by its mirror-symmetric part
    (f(p) + M f(M p)) / 2 with M flipping x.
    """
    count = scales.shape[0]
    centres = anchors[rng.choice(anchors.shape[0], size=(count, bumps))]  # (K, B, 3)
    vectors = rng.normal(size=(count, bumps, 3))
    flip = np.array([-1.0, 1.0, 1.0])
    fields = np.empty((points.shape[0], 3, count))
    chunk = 16  # components per step: small temporaries, fast
    for k0 in range(0, count, chunk):
        ks = slice(k0, min(k0 + chunk, count))
        c = centres[ks].reshape(-1, 3)
        width = np.repeat(scales[ks], bumps)
        n = c.shape[0] // bumps
        # block-diagonal weights: bump b of component k adds vectors[k, b] to output k
        weights = np.zeros((n, bumps, n, 3))
        weights[np.arange(n), :, np.arange(n), :] = vectors[ks]
        weights = weights.reshape(n * bumps, n * 3)

        def evaluate(p: np.ndarray, c: np.ndarray = c, width: np.ndarray = width,
                     n: int = n, weights: np.ndarray = weights) -> np.ndarray:
            d2 = (p**2).sum(1)[:, None] + (c**2).sum(1)[None] - 2.0 * p @ c.T
            # float32 halves the cost of exp; the fields are orthonormalised in float64
            gauss = np.exp((-0.5 * np.maximum(d2, 0.0) / width**2).astype(np.float32))
            return (gauss @ weights).reshape(p.shape[0], n, 3).transpose(0, 2, 1)

        value = evaluate(points)
        sym = symmetric[ks]
        if sym.any():
            mirrored = 0.5 * (value + evaluate(points * flip) * flip[None, :, None])
            value = np.where(sym[None, None, :], mirrored, value)
        fields[:, :, ks] = value
    return fields


class _Context:
    """Per-vertex quantities shared by the component builders."""

    def __init__(self, mesh: HeadMesh, rig: Rig) -> None:
        self.mesh = mesh
        self.rig = rig
        self.verts = mesh.verts
        self.head = ~np.isnan(mesh.row_s)
        self.s = np.nan_to_num(mesh.row_s)
        self.phi = np.nan_to_num(mesh.phi)
        self.aphi = np.abs(self.phi)
        self.theta = np.nan_to_num(mesh.theta)
        self.radial = mesh.radial
        self.side = np.sign(self.verts[:, 0])
        lay = mesh.layout
        corner_s = np.full(2, 0.5 * (MOUTH_ROWS[3] + MOUTH_ROWS[4]))
        corners, _, _, _ = surface_points(
            corner_s, np.array([lay.mouth_half_width, -lay.mouth_half_width]), lay)
        self.mouth_corners = corners  # left, right
        centre, _, _, _ = surface_points(np.array([MOUTH_ROWS[2] + 0.5]), np.array([0.0]), lay)
        self.mouth_centre = centre[0]

    def head_only(self, field: np.ndarray) -> np.ndarray:
        return np.where(self.head[:, None], field, 0.0)

    def near(self, point: np.ndarray, sigma: float) -> np.ndarray:
        return _gauss(np.linalg.norm(self.verts - point, axis=1), sigma)

    def at(self, theta: float, phi: float, s_theta: float, s_phi: float) -> np.ndarray:
        return _gauss(self.theta - theta, s_theta) * _gauss(self.phi - phi, s_phi) * self.head


# ----------------------------------------------------------------------------- identity


def _eyeballs_follow(ctx: _Context, field: np.ndarray) -> np.ndarray:
    """Move each eyeball rigidly with the mean displacement of its eye region."""
    lay = ctx.mesh.layout
    out = field.copy()
    for k, sign in enumerate((1.0, -1.0)):
        region = ctx.at(lay.eye_theta, sign * lay.eye_phi, 6.0, 8.0) > 0.3
        out[ctx.mesh.eyeball_verts[k]] = field[region].mean(axis=0)
    return out


def _identity_named(ctx: _Context) -> list[np.ndarray]:
    x, y, z = ctx.verts.T
    f, r = ctx.mesh.features, ctx.radial
    zero = np.zeros_like(x)
    lower_face = _smoothstep((0.0 - y) / 0.07)
    fields = [
        np.stack([x, zero, zero], 1),  # head_width
        np.stack([zero, -_smoothstep((0.03 - y) / 0.12), zero], 1),  # face_length
        np.stack([zero, zero, z], 1),  # head_depth
        np.stack([x * lower_face * _smoothstep((z + 0.03) / 0.06), zero, zero], 1),  # jaw_width
        f["nose"][:, None] * r,  # nose_size
        f["brow"][:, None] * r,  # brow_ridge
        f["cheeks"][:, None] * r + 0.3 * ctx.at(100.0, 38.0, 10.0, 12.0)[:, None] * r * 0.004,
        np.stack([zero, zero, -_smoothstep((y - 0.03) / 0.08) * _smoothstep(z / 0.05)], 1),
        f["chin"][:, None] * r + np.stack(
            [zero, zero, 0.004 * ctx.at(130.0, 0.0, 8.0, 14.0)], 1),  # chin_prominence
        np.stack([ctx.side * (ctx.at(71.0, 21.0, 8.0, 10.0) + ctx.at(71.0, -21.0, 8.0, 10.0)),
                  zero, zero], 1),  # eye_spacing
        np.where((f["lips"] > 0)[:, None], f["lips"][:, None] * r, 0.0),  # lip_fullness
        np.stack([zero, _smoothstep((y - 0.03) / 0.09), zero], 1),  # cranium_height
    ]
    return [ctx.head_only(fld) for fld in fields]


def identity_basis(mesh: HeadMesh, rig: Rig, rng: np.random.Generator) -> np.ndarray:
    """(V, 3, 300) identity directions, one standard deviation each."""
    ctx = _Context(mesh, rig)
    fields = _identity_named(ctx)
    anchors = mesh.verts[ctx.head]
    extra = np.arange(len(fields), NUM_IDENTITY)
    scales = 0.06 * (extra / len(IDENTITY_COMPONENTS)) ** -0.34
    symmetric = rng.random(extra.shape[0]) < 0.75
    random = _random_smooth_fields(rng, anchors, mesh.verts, scales, symmetric)
    fields += [ctx.head_only(random[:, :, k]) for k in range(extra.shape[0])]
    fields = [_eyeballs_follow(ctx, fld) for fld in fields]
    matrix = np.stack([fld.ravel() for fld in fields], axis=1)  # (3V, 300)
    # orthogonalise in order (Gram-Schmidt via QR), keep each direction's sense
    q = _orthonormalise(matrix)
    extra = np.arange(NUM_IDENTITY - len(IDENTITY_COMPONENTS))
    amplitudes = np.concatenate([_IDENTITY_SPREAD, 0.0025 * (1.0 + extra / 6.0) ** -0.9])
    basis = np.empty((mesh.verts.shape[0], 3, NUM_IDENTITY))
    for k in range(NUM_IDENTITY):
        basis[:, :, k] = _normalise(q[:, k].reshape(-1, 3), amplitudes[k])
    return basis


# ----------------------------------------------------------------------------- expression


def _eyelid_slide(ctx: _Context, shift_fn, sides: tuple[float, ...]) -> np.ndarray:
    """Displacement that slides head vertices along their column by a row shift.

    ``shift_fn(s)`` gives the row shift of a vertex at row ``s`` inside the eye; it is faded
    out beyond the eye corners. The result is the displacement at full effect.
    """
    lay = ctx.mesh.layout
    out = np.zeros_like(ctx.verts)
    for sign in sides:
        e_out = (ctx.phi - sign * lay.eye_phi) / lay.eye_half_width * sign
        window = (1.0 - _smoothstep((np.abs(e_out) - 1.0) / 0.5)) * (ctx.phi * sign > 0)
        near_eye = ctx.head & (window > 0) & (np.abs(ctx.s - EYE_ROWS[0]) < 8)
        idx = np.flatnonzero(near_eye)
        shift = shift_fn(ctx.s[idx]) * window[idx]
        moved, _, _, _ = surface_points(ctx.s[idx] + shift, ctx.phi[idx], lay)
        out[idx] += moved - ctx.verts[idx]
    return out


def _close_shift(s: np.ndarray) -> np.ndarray:
    a, b = EYE_ROWS[0], EYE_ROWS[-1]
    inside = np.clip(b - s, 0.0, None) * (s >= a)
    above = (b - a) * np.exp(-(((a - s) / 1.3) ** 2)) * (s < a)
    return inside + above


def _squint_shift(s: np.ndarray) -> np.ndarray:
    a, b = EYE_ROWS[0], EYE_ROWS[-1]
    return -0.7 * np.exp(-(((s - b) / 1.6) ** 2)) * _smoothstep(s - a)


def _widen_shift(s: np.ndarray) -> np.ndarray:
    a, b = EYE_ROWS[0], EYE_ROWS[-1]
    return -0.8 * np.exp(-(((s - a) / 1.5) ** 2)) * (1.0 - _smoothstep(s - (b - 1)))


def _expression_named(ctx: _Context) -> list[np.ndarray]:
    x, y, z = ctx.verts.T
    zero = np.zeros_like(x)
    ones = np.ones_like(x)
    j_jaw = ctx.rig.joints[JAW]
    w_jaw = ctx.rig.weights[:, JAW]
    left_c, right_c = ctx.mouth_corners
    corners = ctx.near(left_c, 0.012) + ctx.near(right_c, 0.012)
    lateral = np.stack([ctx.side, zero, zero], 1)
    up = np.stack([zero, ones, zero], 1)
    forward = np.stack([zero, zero, ones], 1)
    lips = ctx.near(ctx.mouth_centre, 0.016) * ctx.head
    s = ctx.s
    upper_lip = lips * (s <= MOUTH_ROWS[3])
    lower_lip = lips * (s >= MOUTH_ROWS[4])
    brows = ctx.at(59.0, 20.0, 5.0, 14.0) + ctx.at(59.0, -20.0, 5.0, 14.0)
    inner_brows = ctx.at(60.0, 8.0, 4.5, 6.0) + ctx.at(60.0, -8.0, 4.5, 6.0)
    cheeks = ctx.at(97.0, 35.0, 9.0, 10.0) + ctx.at(97.0, -35.0, 9.0, 10.0)
    chin = ctx.at(129.0, 0.0, 7.0, 12.0)
    alae = ctx.at(95.0, 9.0, 3.0, 3.0) + ctx.at(95.0, -9.0, 3.0, 3.0)
    nose_sides = ctx.at(86.0, 6.0, 6.0, 4.0) + ctx.at(86.0, -6.0, 6.0, 4.0)
    left = (x > 0).astype(np.float64)
    right = 1.0 - left
    rot_x = np.cross(np.array([1.0, 0.0, 0.0]), ctx.verts - j_jaw)  # d/dangle of a jaw opening

    def at_each(weight: np.ndarray, vec: np.ndarray) -> np.ndarray:
        return weight[:, None] * vec

    smile = at_each(corners, 0.5 * lateral + up - 0.4 * forward) + at_each(cheeks, 0.5 * up)
    eyes_close = _eyelid_slide(ctx, _close_shift, (1.0, -1.0))
    fields = [
        w_jaw[:, None] * rot_x,  # jaw_drop
        smile,  # smile
        at_each(corners, lateral - 0.3 * forward),  # mouth_stretch
        at_each(corners, -up + 0.2 * lateral) - at_each(chin, 0.3 * up),  # frown
        at_each(lips, forward) - at_each(corners, 0.8 * lateral),  # lip_pucker
        at_each(upper_lip, -0.5 * up - 0.5 * forward) + at_each(lower_lip, 0.5 * up - 0.5
                                                                 * forward),  # lip_press
        at_each(brows, up) + at_each(ctx.at(53.0, 0.0, 6.0, 30.0), 0.4 * up),  # brow_raise
        at_each(brows, -up) - at_each(inner_brows, 0.6 * lateral),  # brow_lower
        at_each(inner_brows, up),  # inner_brow_raise
        eyes_close,  # eyes_close
        _eyelid_slide(ctx, _squint_shift, (1.0, -1.0)) + at_each(cheeks, 0.002 * up),
        at_each(nose_sides, up) + at_each(upper_lip, 0.3 * up),  # nose_wrinkle
        at_each(upper_lip, up + 0.3 * forward),  # upper_lip_raise
        at_each(lower_lip, -up + 0.3 * forward),  # lower_lip_depress
        smile * (left - right)[:, None],  # smile_asymmetric
        eyes_close * (left - right)[:, None],  # eye_wink
        at_each(w_jaw, np.array([1.0, 0.0, 0.0]) * ones[:, None]),  # jaw_sideways
        at_each(cheeks + ctx.at(108.0, 32.0, 9.0, 9.0) + ctx.at(108.0, -32.0, 9.0, 9.0),
                ctx.radial),  # cheek_puff
        at_each(ctx.near(ctx.mouth_centre, 0.02) * ctx.head, np.array([1.0, 0.0, 0.0])
                * ones[:, None]),  # mouth_sideways
        at_each(chin, up + 0.3 * forward) + at_each(lower_lip, 0.5 * up),  # chin_raise
        at_each(lips, -forward),  # lip_roll
        at_each(alae, lateral),  # nostril_flare
        _eyelid_slide(ctx, _widen_shift, (1.0, -1.0)),  # eyes_wide
        at_each(corners, -forward - 0.3 * lateral),  # lip_corner_dimple
        at_each(brows * (left - right), up),  # brow_asymmetric
    ]
    amplitudes = [0.006, 0.004, 0.004, 0.0035, 0.003, 0.0025, 0.004, 0.0035, 0.0035, 0.0,
                  0.002, 0.0025, 0.003, 0.003, 0.003, 0.0, 0.003, 0.003, 0.003, 0.003, 0.0025,
                  0.0015, 0.0015, 0.002, 0.003]
    out = []
    for fld, amp in zip(fields, amplitudes, strict=True):
        fld = ctx.head_only(fld)
        if amp == 0.0:  # the eyelid closers: full effect at EYELID_CLOSED_AT
            out.append(fld / EYELID_CLOSED_AT)
        else:
            out.append(_normalise(fld, amp))
    return out


def expression_basis(mesh: HeadMesh, rig: Rig, rng: np.random.Generator) -> np.ndarray:
    """(V, 3, 100) expression directions, one standard deviation each."""
    ctx = _Context(mesh, rig)
    fields = _expression_named(ctx)
    face = ctx.head & (ctx.aphi < 50.0) & (ctx.theta > 60.0) & (ctx.theta < 132.0)
    anchors = mesh.verts[face]
    # random fields stay on the face: forehead to chin, cheek to cheek
    window = ctx.head * (_smoothstep((ctx.theta - 48.0) / 12.0)
                         * _smoothstep((146.0 - ctx.theta) / 12.0)
                         * _smoothstep((80.0 - ctx.aphi) / 20.0))
    num_named = len(fields)
    while len(fields) < NUM_EXPRESSION:
        k = len(fields) - num_named
        frac = k / (NUM_EXPRESSION - num_named)
        sigma = 0.018 - 0.009 * frac
        centre = anchors[rng.integers(anchors.shape[0])]
        offset = rng.normal(size=3)
        linear = rng.normal(scale=0.5, size=(3, 3))

        def bump(p: np.ndarray, centre=centre, offset=offset, linear=linear, sigma=sigma):
            d = p - centre
            env = np.exp(-0.5 * (d**2).sum(1) / sigma**2)
            return env[:, None] * (offset + (d / sigma) @ linear.T)

        field = _mirror(bump, mesh.verts) if rng.random() < 0.5 else bump(mesh.verts)
        amplitude = 0.0025 * (1.0 - 0.75 * frac)
        fields.append(_normalise(window[:, None] * field, amplitude))
    return np.stack(fields, axis=-1)
