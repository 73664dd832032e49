"""Crop square, similarity transform and warp against the original's skimage code."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data
from skimage.transform import estimate_transform, warp

from emoca_pipeline.data.crop import (
    CropSettings,
    crop_box_from_bbox,
    crop_box_from_landmarks,
    crop_transform,
    transform_points,
    warp_crop,
)

RNG = np.random.default_rng(3)


def original_bbox2point(left, right, top, bottom, kind):
    """DECA/EMOCA's ``bbox2point`` (decalib/datasets, gdl/datasets/ImageDatasetHelpers)."""
    if kind == "kpt68":
        old_size = (right - left + bottom - top) / 2 * 1.1
        center = np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0])
    else:
        old_size = (right - left + bottom - top) / 2
        center = np.array(
            [right - (right - left) / 2.0, bottom - (bottom - top) / 2.0 + old_size * 0.12]
        )
    return old_size, center


def original_tform(center, size, out_size=224):
    src = np.array([[center[0] - size / 2, center[1] - size / 2],
                    [center[0] - size / 2, center[1] + size / 2],
                    [center[0] + size / 2, center[1] - size / 2]])
    dst = np.array([[0, 0], [0, out_size - 1], [out_size - 1, 0]])
    return estimate_transform("similarity", src, dst)


def random_box():
    left, top = RNG.uniform(-50, 600, 2)
    width, height = RNG.uniform(20, 400, 2)
    return left, top, left + width, top + height


def test_transform_matches_skimage_estimate_transform() -> None:
    for _ in range(50):
        center = RNG.uniform(-100, 2000, 2)
        size = RNG.uniform(10, 3000)
        out_size = int(RNG.choice([224, 256, 112]))
        ours = crop_transform(center, size, out_size)
        reference = original_tform(center, size, out_size).params
        np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-9 * (1 + abs(center).max()))


def test_square_corners_land_on_crop_corners_and_round_trip() -> None:
    center, size = np.array([310.7, 205.2]), 187.0
    transform = crop_transform(center, size)
    corners = center + size / 2 * np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]])
    np.testing.assert_allclose(transform_points(corners, transform),
                               [[0, 0], [0, 223], [223, 0], [223, 223]], atol=1e-9)
    points = RNG.uniform(-500, 1500, (100, 2))
    back = transform_points(transform_points(points, transform), np.linalg.inv(transform))
    np.testing.assert_allclose(back, points, atol=1e-9)
    # Extra columns (e.g. z) are ignored.
    with_z = np.concatenate([points, RNG.normal(size=(100, 1))], axis=1)
    np.testing.assert_allclose(transform_points(with_z, transform),
                               transform_points(points, transform))


def test_landmark_rule_matches_the_original() -> None:
    for _ in range(50):
        left, top, right, bottom = random_box()
        points = np.stack([RNG.uniform(left, right, 68), RNG.uniform(top, bottom, 68)], 1)
        points[0] = left, top
        points[1] = right, bottom
        box = crop_box_from_landmarks(points)
        old_size, center = original_bbox2point(left, right, top, bottom, "kpt68")
        assert box.size == int(old_size * 1.25)
        np.testing.assert_allclose(box.center, center, rtol=0, atol=1e-12)


def test_detector_box_rule_matches_the_original() -> None:
    for _ in range(50):
        left, top, right, bottom = random_box()
        box = crop_box_from_bbox(np.array([left, top, right, bottom]))
        old_size, center = original_bbox2point(left, right, top, bottom, "bbox")
        assert box.size == int(old_size * 1.25)
        np.testing.assert_allclose(box.center, center, rtol=0, atol=1e-12)


def test_crop_constants_by_hand() -> None:
    # A 100 x 60 box: landmarks -> 80 * 1.1 * 1.25 = 110; box -> 80 * 1.25 = 100, centre
    # moved down by 0.12 * 80 = 9.6.
    points = np.array([[10.0, 20.0], [110.0, 80.0], [50.0, 50.0]])
    from_points = crop_box_from_landmarks(points)
    assert from_points.size == 110.0
    np.testing.assert_allclose(from_points.center, [60.0, 50.0])
    from_box = crop_box_from_bbox(np.array([10.0, 20.0, 110.0, 80.0]))
    assert from_box.size == 100.0
    np.testing.assert_allclose(from_box.center, [60.0, 59.6])
    exact = crop_box_from_landmarks(points + 0.3, CropSettings(integer_size=False))
    assert exact.size == pytest.approx(110.0)
    truncated = crop_box_from_landmarks(points * 1.01)  # 111.1 -> 111 as int() does
    assert truncated.size == 111.0


def test_invalid_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="degenerate"):
        crop_box_from_bbox(np.array([10.0, 10.0, 10.0, 50.0]))
    with pytest.raises(ValueError, match="NaN"):
        crop_box_from_landmarks(np.array([[0.0, 0.0], [np.nan, 3.0]]))
    with pytest.raises(ValueError, match=r"\(K>=2, 2\)"):
        crop_box_from_landmarks(np.zeros(5))
    with pytest.raises(ValueError, match="4 values"):
        crop_box_from_bbox(np.zeros(3))
    with pytest.raises(ValueError, match="positive"):
        crop_transform(np.zeros(2), 0.0)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        transform_points(np.zeros((2, 2)), np.eye(2))


def test_unit_scale_crop_is_an_exact_cut() -> None:
    image = data.astronaut()
    # size = out - 1 gives scale 1; a corner on whole pixels gives integer sampling points.
    transform = crop_transform(np.array([100 + 111.5, 50 + 111.5]), 223.0)
    np.testing.assert_array_equal(warp_crop(image, transform), image[50:274, 100:324])


def test_warp_agrees_with_skimage_bicubic() -> None:
    """OpenCV's cubic convolution vs the original's skimage cubic spline (order=3).

    Measured on the astronaut: mean |difference| about 0.6 grey levels, 99th percentile
    about 4, maximum about 12 at the sharpest edges.
    """
    image = data.astronaut()
    for center, size in [((230.3, 130.7), 180.0), ((20.0, 20.0), 300.0), ((256, 256), 700.0)]:
        transform = crop_transform(np.array(center), size)
        ours = warp_crop(image, transform).astype(np.float64)
        tform = original_tform(center, size)
        reference = warp(image, tform.inverse, output_shape=(224, 224), order=3) * 255
        difference = np.abs(ours - reference)
        assert difference.mean() < 1.0, (center, difference.mean())
        assert np.percentile(difference, 99) < 6.0, (center, np.percentile(difference, 99))
        assert difference.max() < 20.0


def test_outside_the_image_is_black_and_dtypes_are_kept() -> None:
    image = np.full((100, 100, 3), 200, np.uint8)
    transform = crop_transform(np.array([0.0, 0.0]), 100.0)  # the image fills the lower right
    crop = warp_crop(image, transform)
    assert crop.dtype == np.uint8 and crop.shape == (224, 224, 3)
    assert crop[:100, :100].max() == 0 and crop[120:, 120:].min() == 200
    as_float = warp_crop(image.astype(np.float32) / 255, transform)
    assert as_float.dtype == np.float32
    gray = warp_crop(image[..., :1], transform)
    assert gray.shape == (224, 224, 1)


def test_landmarks_map_into_the_crop() -> None:
    points = RNG.uniform([200, 100], [300, 230], (68, 2))
    box = crop_box_from_landmarks(points)
    crop_points = transform_points(points, crop_transform(box.center, box.size))
    # The landmark box's mean side spans 1 / (1.1 * 1.25) = 73% of the crop, centred.
    assert crop_points.min() > 0 and crop_points.max() < 223
    span = crop_points.max(axis=0) - crop_points.min(axis=0)
    assert span.mean() == pytest.approx(223 / 1.375, rel=0.01)
    middle = (crop_points.max(axis=0) + crop_points.min(axis=0)) / 2
    np.testing.assert_allclose(middle, [111.5, 111.5], atol=1.0)
