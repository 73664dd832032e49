"""EMOCA losses against hand computations."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from emoca_pipeline.losses.emoca import (
    EYE_PAIRS,
    LIP_PAIRS,
    CoarseLossWeights,
    EmocaCoarseLoss,
    EmocaDetailLoss,
    IDMRFLoss,
    binary_erosion,
    expression_regularizer,
    landmark_weights,
    mrf_loss,
    photometric_loss,
    relative_distance_loss,
    shading_smoothness_loss,
    weighted_landmark_loss,
)


def test_landmark_weights_are_deca_s() -> None:
    w = landmark_weights().numpy()
    expected = np.ones(68)
    expected[[5, 6, 10, 11]] = 2
    expected[27:36] = 1.5
    expected[[30, 31, 35]] = 3
    expected[48:68] = 1.5
    expected[[48, 54]] = 3
    np.testing.assert_array_equal(w, expected)
    assert w.sum() == 68 + 4 + 9 * 0.5 + 3 * 1.5 + 20 * 0.5 + 2 * 1.5


def test_weighted_landmark_loss_by_hand() -> None:
    rng = np.random.default_rng(0)
    pred, gt = rng.normal(size=(3, 68, 2)), rng.normal(size=(3, 68, 2))
    w = landmark_weights().numpy()
    total = 0.0
    for n in range(3):
        for i in range(68):
            total += w[i] * (abs(pred[n, i, 0] - gt[n, i, 0]) + abs(pred[n, i, 1] - gt[n, i, 1]))
    expected = total / (2 * 3 * w.sum())
    got = weighted_landmark_loss(torch.tensor(pred), torch.tensor(gt))
    assert got.item() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match=r"expected \(N, 68, 2\)"):
        weighted_landmark_loss(torch.zeros(3, 51, 2), torch.zeros(3, 51, 2))


def test_relative_distances_by_hand() -> None:
    pred = torch.zeros(1, 68, 2)
    gt = torch.zeros(1, 68, 2)
    # Eyes: predicted open by 0.1 on every pair, ground truth closed (distance 0).
    for _a, b in EYE_PAIRS:
        pred[0, b, 1] = 0.1
    assert relative_distance_loss(pred, gt, EYE_PAIRS).item() == pytest.approx(0.1)
    # Lips: one pair at 3-4-5 distance 0.5 vs ground truth 0.2, others equal.
    gt[0, 61] = torch.tensor([0.0, 0.2])
    pred[0, 61] = torch.tensor([0.3, 0.4])
    assert relative_distance_loss(pred, gt, LIP_PAIRS).item() == pytest.approx(0.3 / 3)
    # Translation of both points changes nothing.
    assert relative_distance_loss(pred + 5, gt, EYE_PAIRS).item() == pytest.approx(0.1)


def test_photometric_regulariser_smoothness_erosion() -> None:
    pred = torch.full((2, 3, 4, 4), 0.5)
    images = torch.zeros(2, 3, 4, 4)
    masks = torch.zeros(2, 1, 4, 4)
    masks[:, :, :2] = 1  # half the pixels
    assert photometric_loss(pred, images, masks).item() == pytest.approx(0.25)
    exp = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    assert expression_regularizer(exp).item() == pytest.approx(7.0)
    ramp = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 6, 6)  # dx = 1, dy = 0
    assert shading_smoothness_loss(ramp).item() == pytest.approx(1.0)
    mask = torch.zeros(1, 1, 9, 9)
    mask[:, :, 1:8, 1:8] = 1
    eroded = binary_erosion(mask, 5)
    assert eroded.sum() == 9 and eroded[0, 0, 3:6, 3:6].min() == 1


def test_mrf_loss_prefers_matching_features() -> None:
    torch.manual_seed(0)
    target = torch.rand(2, 8, 5, 5)
    same = mrf_loss(target.clone(), target)
    noise = mrf_loss(torch.rand(2, 8, 5, 5), target)
    # Identical features: every target patch's best match has similarity ~1 -> loss ~0.
    assert same.abs().item() < 1e-4
    assert noise > 0.1
    # Single patch: similarity 1, loss -log(1) = 0 per image.
    one = torch.rand(3, 4, 1, 1)
    assert mrf_loss(one, one).abs().max() < 1e-6


def test_idmrf_without_weights_is_disabled_with_a_warning(caplog, tmp_path) -> None:
    with caplog.at_level(logging.WARNING):
        loss = IDMRFLoss(tmp_path / "vgg19.pth")
    assert not loss.enabled and "vgg19.pth" in caplog.text
    x = torch.rand(1, 3, 32, 32)
    assert loss(x, x).item() == 0.0
    detail = EmocaDetailLoss(vgg19_weights=None)
    uv = torch.rand(1, 3, 256, 256)
    vis = torch.ones(1, 1, 256, 256)
    z = torch.zeros(1, 1, 256, 256, requires_grad=True)
    out = detail(uv, uv, vis, z, uv, x, x, torch.ones(1, 1, 32, 32))
    assert "idmrf" not in out.terms and math.isfinite(out.total.item())
    assert out.terms["photometric_uv"].item() == 0.0


class _MeanColour(torch.nn.Module):
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def test_coarse_loss_emotion_term_and_weights() -> None:
    loss = EmocaCoarseLoss(CoarseLossWeights(emotion=1.0, landmark=1.0), _MeanColour())
    rendered = torch.full((2, 3, 8, 8), 0.25, requires_grad=True)
    images = torch.full((2, 3, 8, 8), 0.75, requires_grad=True)
    lmk = torch.zeros(2, 68, 2)
    out = loss(rendered, lmk, torch.zeros(2, 50), images, lmk, torch.ones(2, 1, 8, 8))
    assert out.terms["emotion"].item() == pytest.approx(0.25)  # (0.25 - 0.75)^2
    assert out.terms["photometric"].item() == pytest.approx(2.0 * 0.5)
    assert loss.emotion is not None
    loss.emotion(rendered, images).backward()
    assert images.grad is None  # the input branch of the emotion loss has no grad
    assert rendered.grad is not None and rendered.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="must be >= 0"):
        CoarseLossWeights(photometric=-1)


def test_erosion_binarises_like_scipy() -> None:
    """DECA/EMOCA erode the soft UV visibility mask with scipy.ndimage.binary_erosion, which
    counts every non-zero value as inside (border outside = 0)."""
    from scipy import ndimage

    rng = np.random.default_rng(4)
    soft = rng.uniform(0, 1, (2, 1, 24, 24)) * (rng.uniform(0, 1, (2, 1, 24, 24)) > 0.15)
    soft[0, 0, 5:20, 4:22] = rng.uniform(0.01, 0.3, (15, 18))  # a faint but non-zero region
    expected = np.stack([ndimage.binary_erosion(m[0], np.ones((5, 5)))[None] for m in soft])
    got = binary_erosion(torch.from_numpy(soft).float(), 5)
    np.testing.assert_array_equal(got.numpy(), expected.astype(np.float32))
    assert expected[0, 0, 7:18, 6:20].all()  # the faint region survives, as in the original


def test_a_weight_without_its_network_is_an_error() -> None:
    with pytest.raises(ValueError, match="emotion = 1.0 needs a trained emotion network"):
        EmocaCoarseLoss(CoarseLossWeights())
    with pytest.raises(ValueError, match="identity = 0.2 needs the VGGFace2"):
        EmocaCoarseLoss(CoarseLossWeights(emotion=0.0, identity=0.2))
    with pytest.raises(ValueError, match="lip_reading = 0.0015 needs the lip-reading"):
        EmocaCoarseLoss(CoarseLossWeights(emotion=0.0, lip_reading=0.0015))


def test_lip_reading_weights_missing_message(tmp_path) -> None:
    from emoca_pipeline.losses.lipreading import load_lipreading_frontend

    path = tmp_path / "LRS3_V_WER32.3" / "model.pth"
    with pytest.raises(FileNotFoundError, match=r"lip-reading weights not found at .*model\.pth"
                                                r": the lip-reading loss needs"):
        load_lipreading_frontend(path)


def test_lip_reading_frontend_loads_the_released_layout(tmp_path) -> None:
    from emoca_pipeline.losses.lipreading import LipReadingFrontend, load_lipreading_frontend

    torch.manual_seed(0)
    source = LipReadingFrontend("prelu")
    # The released model.pth: the E2E state dict, front-end under encoder.frontend.
    state = {f"encoder.frontend.{k}": v for k, v in source.state_dict().items()}
    state["encoder.embed.0.weight"] = torch.zeros(256, 512)  # conformer: not needed
    state["decoder.output_layer.weight"] = torch.zeros(10, 256)
    path = tmp_path / "model.pth"
    torch.save(state, path)
    loaded = load_lipreading_frontend(path)
    assert loaded.relu_type == "prelu"  # read from the weights (PReLU has parameters)
    frames = torch.rand(3, 1, 88, 88)
    with torch.no_grad():
        assert torch.equal(loaded(frames), source.eval()(frames))
        assert loaded(frames).shape == (3, 1, 512)
    del state["encoder.frontend.trunk.layer4.1.conv2.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing key 'encoder\.frontend\.trunk\.layer4\.1\."
                                         r"conv2\.weight'"):
        load_lipreading_frontend(path)


def test_mouth_crop_by_hand() -> None:
    """The crop is a 96 x 96 grid of +-48 px (in units of half the image size) around the
    mean of points 48..67, sampled with align_corners=True: column j of the crop reads image
    x = ((cx + (-48 + j * 96 / 95) / (W / 2)) + 1) / 2 * (W - 1)."""
    from emoca_pipeline.losses.lipreading import cut_mouth

    size = 224
    image = torch.zeros(1, 3, size, size, dtype=torch.float64)
    image[:, :, 100:140, 60:180] = 1.0  # a white mouth-sized block (luma 0.2989+0.587+0.114)
    landmarks = torch.zeros(1, 68, 2, dtype=torch.float64)
    landmarks[0, 48:68, 0] = torch.linspace(-0.2, 0.2, 20, dtype=torch.float64)  # mean 0
    landmarks[0, 48:68, 1] = 0.1
    crop = cut_mouth(image, landmarks)
    assert crop.shape == (1, 1, 96, 96)
    luma = 0.2989 + 0.587 + 0.114
    # Crop row i -> image row ((0.1 + (-48 + i*96/95)/112) + 1)/2*223; rows 20..75 land
    # well inside 100..139 and columns all inside 60..179.
    for i in (30, 47, 60):
        y = ((0.1 + (-48 + i * 96 / 95) / 112) + 1) / 2 * 223
        assert 102 < y < 137
        assert crop[0, 0, i, 48].item() == pytest.approx(luma, abs=1e-6)
    y_top = ((0.1 + (-48) / 112) + 1) / 2 * 223  # ~= 75.9: above the block
    assert y_top < 98
    assert crop[0, 0, 0, 48].item() == pytest.approx(0.0, abs=1e-6)


def test_lip_reading_loss_is_zero_for_equal_mouths_and_trains_the_render() -> None:
    from emoca_pipeline.losses.lipreading import LipReadingFrontend, LipReadingLoss

    torch.manual_seed(1)
    loss = LipReadingLoss(LipReadingFrontend())
    images = torch.rand(2, 3, 224, 224)
    landmarks = torch.rand(2, 68, 2) * 0.4 - 0.2
    rendered = images.clone().requires_grad_(True)
    same = loss(images, rendered, landmarks, landmarks)
    assert same.abs().item() < 1e-5
    other = loss(images, torch.rand(2, 3, 224, 224, requires_grad=True), landmarks, landmarks)
    assert other.item() > 1e-3
    (same + other).backward()
    assert rendered.grad is not None and rendered.grad.abs().sum() > 0
