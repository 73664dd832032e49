"""Emotion networks (image ResNet-50, EmoMLP), their losses, and AffectNet label rules."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from scipy.stats import pearsonr
from torch.utils.data import WeightedRandomSampler

from emoca_pipeline.evaluation import ClassificationAccumulator, RegressionAccumulator
from emoca_pipeline.losses import (
    EmotionLoss,
    VALoss,
    VALossSettings,
    batch_ccc,
    batch_pcc,
    class_balanced_weights,
    expression_nll,
)
from emoca_pipeline.models import (
    AFFECTNET_CLASSES,
    EmoMLP,
    EmoMLPSettings,
    EmotionImageNet,
    filter_affectnet_labels,
)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Seeded (the single torch thread comes from conftest's autouse fixture)."""
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------
# Networks


def test_image_network_outputs() -> None:
    model = EmotionImageNet().eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        features = model.features(images)
    assert out.expr_logits.shape == (2, 8)
    assert out.valence.shape == (2,) and out.arousal.shape == (2,)
    assert out.features.shape == (2, 2048)
    torch.testing.assert_close(out.expr_logits.exp().sum(dim=1), torch.ones(2))
    torch.testing.assert_close(features, out.features)
    # The head is one Linear on the pooled features, as in the original EmoCnn.
    raw = model.head(features)
    torch.testing.assert_close(out.valence, raw[:, 8])
    torch.testing.assert_close(out.expr_logits, F.log_softmax(raw[:, :8], dim=1))


def test_image_network_heads_are_float32_under_bf16_autocast() -> None:
    # bf16 log-softmax rows sum to 1 only within ~1e-2, which the emotion table refuses.
    torch.manual_seed(0)
    net = EmotionImageNet(8).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.rand(3, 3, 64, 64))
    assert out.expr_logits.dtype == out.valence.dtype == out.arousal.dtype == torch.float32
    torch.testing.assert_close(out.expr_logits.exp().sum(1), torch.ones(3), atol=1e-6, rtol=0)

def test_image_network_normalisation_option() -> None:
    plain = EmotionImageNet().eval()
    normalised = EmotionImageNet(input_normalization="imagenet").eval()
    normalised.load_state_dict(plain.state_dict())
    images = torch.rand(1, 3, 48, 48)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(
            normalised.features(images), plain.features((images - mean) / std)
        )
        assert not torch.allclose(normalised.features(images), plain.features(images))
    with pytest.raises(ValueError, match="input_normalization"):
        EmotionImageNet(input_normalization="imagenet_bgr")  # type: ignore[arg-type]


def test_image_network_rejects_bad_images() -> None:
    model = EmotionImageNet().eval()
    with pytest.raises(ValueError, match=r"images: expected shape \(N, 3, H, W\)"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="images: expected a float tensor"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_image_network_trains() -> None:
    model = EmotionImageNet().train()
    images = torch.rand(4, 3, 64, 64)  # adaptive pooling takes small inputs; keeps it quick
    expression = torch.tensor([0, 3, 5, 7])
    valence = torch.tensor([0.5, -0.3, 0.8, -0.9])
    arousal = torch.tensor([0.1, 0.7, -0.4, 0.2])
    loss_fn = EmotionLoss(VALossSettings(scheme="fixed"))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(5):
        optimiser.zero_grad()
        loss = loss_fn(model(images), expression, valence, arousal).total
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    # Train-mode BatchNorm on 4 images makes single steps noisy; compare the last two.
    assert np.mean(losses[-2:]) < 0.6 * losses[0], losses


def test_missing_weights_path() -> None:
    with pytest.raises(FileNotFoundError, match="weights file not found: .*no such.pt"):
        EmotionImageNet(weights_path="/nonexistent/no such.pt")


def test_state_dict_round_trip(tmp_path: Path) -> None:
    model = EmotionImageNet().eval()
    with torch.no_grad():  # make the head distinguishable from a fresh init
        model.head.bias.fill_(0.25)
    path = tmp_path / "emotion net ü.pt"
    torch.save(model.state_dict(), path)
    loaded = EmotionImageNet(weights_path=path).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(images), loaded(images), strict=True):
            torch.testing.assert_close(a, b)
    # A Lightning-style {"state_dict": ...} wrapper is unwrapped.
    torch.save({"state_dict": model.state_dict(), "epoch": torch.tensor(3)}, tmp_path / "w.ckpt")
    torch.testing.assert_close(
        EmotionImageNet(weights_path=tmp_path / "w.ckpt").head.bias, model.head.bias
    )


def test_torchvision_trunk_weights(tmp_path: Path) -> None:
    resnet = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        resnet.layer4[2].bn3.running_var.uniform_(0.5, 2.0)  # not the fresh-init ones
    torch.save(resnet.state_dict(), tmp_path / "resnet50.pth")
    model = EmotionImageNet(weights_path=tmp_path / "resnet50.pth")
    torch.testing.assert_close(model.trunk.conv1.weight, resnet.conv1.weight)
    torch.testing.assert_close(
        model.trunk.layer4[2].bn3.running_var, resnet.layer4[2].bn3.running_var
    )


def test_resnet18_backbone_is_torchvisions_and_saves_its_backbone(tmp_path: Path) -> None:
    from emoca_pipeline.models.emotion import load_emotion_model, save_emotion_model

    reference = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        reference.layer4[1].bn2.running_var.uniform_(0.5, 2.0)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = EmotionImageNet(weights_path=tmp_path / "resnet18.pth", backbone="resnet18").eval()
    images = torch.rand(2, 3, 64, 64)
    reference.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(model.features(images), reference(images))
        out = model(images)
    assert model.head.in_features == 512 and out.features.shape == (2, 512)
    saved = save_emotion_model(tmp_path / "model.pt", model, name="light", image_size=64)
    loaded, spec = load_emotion_model(saved)
    assert spec["backbone"] == "resnet18"
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).expr_logits, out.expr_logits)
    with pytest.raises(ValueError, match="resnet18"):
        EmotionImageNet(weights_path=tmp_path / "resnet18.pth")  # a ResNet-50 does not fit


def test_bad_weights_files(tmp_path: Path) -> None:
    partial = {k: v for k, v in EmotionImageNet().state_dict().items() if k != "head.bias"}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="1 missing .*head.bias"):
        EmotionImageNet(weights_path=tmp_path / "partial.pt")
    wrong_shape = EmotionImageNet(n_expressions=7).state_dict()
    torch.save(wrong_shape, tmp_path / "seven.pt")
    with pytest.raises(ValueError, match="does not fit EmotionImageNet"):
        EmotionImageNet(weights_path=tmp_path / "seven.pt")
    # Arbitrary pickles are refused by the weights-only unpickler.
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": Path("/")}, protocol=2))
    with pytest.raises(ValueError, match="not a weights-only torch file"):
        EmotionImageNet(weights_path=tmp_path / "evil.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a state dict"):
        EmotionImageNet(weights_path=tmp_path / "list.pt")


def test_emomlp_architecture_and_outputs() -> None:
    model = EmoMLP().eval()
    assert model.settings.input_dim == 153
    linears = [m for m in model.hidden if isinstance(m, torch.nn.Linear)]
    norms = [m for m in model.hidden if isinstance(m, torch.nn.BatchNorm1d)]
    acts = [m for m in model.hidden if isinstance(m, torch.nn.LeakyReLU)]
    assert [(m.in_features, m.out_features) for m in linears] == [(153, 2048)] + [(2048, 2048)] * 3
    assert len(norms) == 4 and all(a.negative_slope == 0.2 for a in acts) and len(acts) == 4
    with torch.no_grad():
        out = model(torch.randn(5, 100), torch.randn(5, 50), torch.randn(5, 3))
    assert out.expr_logits.shape == (5, 8) and out.features.shape == (5, 2048)
    assert out.valence.shape == (5,) and out.arousal.shape == (5,)
    torch.testing.assert_close(torch.logsumexp(out.expr_logits, dim=1), torch.zeros(5))


def test_emomlp_parts_can_be_switched_off() -> None:
    model = EmoMLP(EmoMLPSettings(use_shape=False, hidden_dim=32)).eval()
    assert model.settings.input_dim == 53
    out = model(expression=torch.randn(3, 50), jaw=torch.randn(3, 3))
    assert out.features.shape == (3, 32)
    with pytest.raises(ValueError, match="shape: this EmoMLP is built with use_shape=False"):
        model(torch.randn(3, 100), torch.randn(3, 50), torch.randn(3, 3))
    with pytest.raises(ValueError, match="jaw: required by this EmoMLP"):
        model(expression=torch.randn(3, 50))
    with pytest.raises(ValueError, match=r"expression: expected shape \(N, 50\), got \(3, 49\)"):
        model(expression=torch.randn(3, 49), jaw=torch.randn(3, 3))
    with pytest.raises(ValueError, match="at least one of"):
        EmoMLPSettings(use_shape=False, use_expression=False, use_jaw=False)


def _synthetic_codes(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random codes with a deterministic labelling: class = argmax of 8 expression dims.

    One of the 8 dims gets a bump so that classes form separable clusters (pure argmax of
    Gaussians puts many rows on a decision boundary); the label is still the argmax.
    """
    shape = torch.randn(n, 100, generator=generator)
    expression = torch.randn(n, 50, generator=generator)
    bumped = torch.randint(0, 8, (n,), generator=generator)
    expression[torch.arange(n), bumped] += 2.0
    jaw = 0.1 * torch.randn(n, 3, generator=generator)
    w_v = torch.linspace(-1, 1, 50)
    w_a = torch.cos(torch.arange(50.0))
    return {
        "shape": shape,
        "expression": expression,
        "jaw": jaw,
        "label": expression[:, :8].argmax(dim=1),
        "valence": torch.tanh(expression @ w_v / 4 + jaw[:, 0]),
        "arousal": torch.tanh(expression @ w_a / 5 - 0.5 * shape[:, 0]),
    }


def test_emomlp_learns_a_deterministic_labelling() -> None:
    generator = torch.Generator().manual_seed(0)
    train = _synthetic_codes(20000, generator)
    test = _synthetic_codes(1000, generator)
    model = EmoMLP(EmoMLPSettings(hidden_dim=128))  # narrower than 2048 to stay fast
    loss_fn = EmotionLoss(generator=torch.Generator().manual_seed(1))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = WeightedRandomSampler(
        class_balanced_weights(train["label"], 8), num_samples=64 * 600, generator=generator
    )
    indices = torch.tensor(list(sampler)).view(-1, 64)
    model.train()
    for batch in indices:
        out = model(train["shape"][batch], train["expression"][batch], train["jaw"][batch])
        loss = loss_fn(out, train["label"][batch], train["valence"][batch],
                       train["arousal"][batch]).total
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    classes = ClassificationAccumulator(8)
    valence, arousal = RegressionAccumulator(), RegressionAccumulator()
    with torch.no_grad():
        for start in range(0, 1000, 250):
            rows = slice(start, start + 250)
            out = model(test["shape"][rows], test["expression"][rows], test["jaw"][rows])
            classes.update(out.expr_logits, test["label"][rows])
            valence.update(out.valence, test["valence"][rows])
            arousal.update(out.arousal, test["arousal"][rows])
    assert classes.compute().accuracy >= 0.8
    assert valence.compute().ccc >= 0.8
    assert arousal.compute().ccc >= 0.8


# ---------------------------------------------------------------------------------------
# Losses


def test_batch_correlations_against_references() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=64)
    x = 0.5 * y + 0.2 + 0.5 * rng.normal(size=64)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    assert batch_pcc(xt, yt).item() == pytest.approx(pearsonr(x, y)[0], abs=1e-7)
    # The original's CCC_torch: unbiased std, Bessel-corrected covariance.
    r, sx, sy = pearsonr(x, y)[0], x.std(ddof=1), y.std(ddof=1)
    original = 2 * r * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)
    assert batch_ccc(xt, yt).item() == pytest.approx(original, abs=1e-7)
    population = 2 * r * x.std() * y.std() / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert batch_ccc(xt, yt, unbiased=False).item() == pytest.approx(population, abs=1e-7)


def test_batch_correlations_degenerate_batches() -> None:
    constant = torch.full((8,), 0.3, requires_grad=True)
    target = torch.linspace(-1, 1, 8)
    value = batch_pcc(constant, target)
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(constant.grad).all() and constant.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        batch_ccc(torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="differ in length: 3 vs 4"):
        batch_pcc(torch.zeros(3), torch.zeros(4))


def _va_batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    return tuple(torch.rand(16, generator=g) * 2 - 1 for _ in range(4))


def test_va_loss_shake_weights() -> None:
    v, a, v_gt, a_gt = _va_batch()
    loss = VALoss(generator=torch.Generator().manual_seed(7)).train()
    first, second = loss(v, a, v_gt, a_gt), loss(v, a, v_gt, a_gt)
    assert list(first.weights) == ["v_mse", "a_mse", "va_lpcc", "va_lccc"]  # the paper's terms
    for out in (first, second):
        assert sum(out.weights.values()) == pytest.approx(1.0)
        assert all(0 < w < 1 for w in out.weights.values())
        expected = sum(out.weights[k] * out.terms[k] for k in out.terms)
        torch.testing.assert_close(out.total, expected)
    assert first.weights != second.weights  # fresh weights every step
    # Same seed, same weights.
    replay = VALoss(generator=torch.Generator().manual_seed(7)).train()
    assert replay(v, a, v_gt, a_gt).weights == first.weights
    # Term values: MSE and 1 - mean correlation.
    torch.testing.assert_close(first.terms["v_mse"], F.mse_loss(v, v_gt))
    torch.testing.assert_close(
        first.terms["va_lccc"], 1 - 0.5 * (batch_ccc(v, v_gt) + batch_ccc(a, a_gt))
    )
    torch.testing.assert_close(
        first.terms["va_lpcc"], 1 - 0.5 * (batch_pcc(v, v_gt) + batch_pcc(a, a_gt))
    )
    # Outside training: the configured weights, normalised, every time.
    loss.eval()
    assert loss(v, a, v_gt, a_gt).weights == {k: 0.25 for k in first.weights}


def test_va_loss_schemes_and_settings() -> None:
    v, a, v_gt, a_gt = _va_batch()
    fixed = VALoss(VALossSettings({"v_lccc": 2.0, "a_lccc": 1.0, "v_mse": 0.0}, "fixed"))
    out = fixed(v, a, v_gt, a_gt)
    assert out.weights == {"v_lccc": 2.0, "a_lccc": 1.0}  # zero-weight terms dropped
    torch.testing.assert_close(out.terms["v_lccc"], 1 - batch_ccc(v, v_gt))
    torch.testing.assert_close(out.total, 2 * out.terms["v_lccc"] + out.terms["a_lccc"])
    norm = VALoss(VALossSettings({"v_lccc": 3.0, "a_lccc": 1.0}, "norm")).train()
    assert norm(v, a, v_gt, a_gt).weights == {"v_lccc": 0.75, "a_lccc": 0.25}
    with pytest.raises(ValueError, match=r"unknown term\(s\) \['v_mae'\]"):
        VALossSettings({"v_mae": 1.0})
    with pytest.raises(ValueError, match="scheme"):
        VALossSettings(scheme="wobble")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one term"):
        VALossSettings({"v_mse": 0.0})


def test_expression_nll() -> None:
    logits = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 3, 7, 7])
    torch.testing.assert_close(
        expression_nll(F.log_softmax(logits, dim=1), labels), F.cross_entropy(logits, labels)
    )
    with pytest.raises(ValueError, match="not log-softmax normalised"):
        expression_nll(logits, labels)
    with pytest.raises(ValueError, match=r"labels: values must lie in 0..7"):
        expression_nll(F.log_softmax(logits, dim=1), torch.tensor([0, 1, 2, 3, 8, 7]))


def test_class_balanced_weights() -> None:
    labels = np.array([0] * 90 + [1] * 9 + [3] * 1)
    weights = class_balanced_weights(labels, 4)
    assert weights.dtype == torch.float64 and weights.shape == (100,)
    per_class = np.bincount(labels, weights=weights.numpy(), minlength=4)
    np.testing.assert_allclose(per_class, [1.0, 1.0, 0.0, 1.0])
    sampler = WeightedRandomSampler(
        weights, num_samples=30000, generator=torch.Generator().manual_seed(0)
    )
    drawn = np.bincount(labels[list(sampler)], minlength=4) / 30000
    np.testing.assert_allclose(drawn, [1 / 3, 1 / 3, 0, 1 / 3], atol=0.02)
    with pytest.raises(ValueError, match=r"labels: values must lie in 0..3"):
        class_balanced_weights(np.array([0, 4]), 4)
    with pytest.raises(ValueError, match="non-empty"):
        class_balanced_weights(np.array([], dtype=int), 4)


# ---------------------------------------------------------------------------------------
# AffectNet conventions


def test_affectnet_classes_and_filter() -> None:
    assert AFFECTNET_CLASSES == (
        "Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
    )
    expression = np.array([0, 7, 8, 9, 10, 3, 2, 1])
    valence = np.array([0.1, -0.5, 0.2, 0.0, 0.3, -2.0, 0.4, np.nan])
    arousal = np.array([0.2, 0.5, 0.1, 0.0, 0.3, 0.6, -2.0, 0.1])
    mask = filter_affectnet_labels(expression, valence, torch.from_numpy(arousal))
    np.testing.assert_array_equal(mask, [True, True, False, False, False, False, False, False])
    with pytest.raises(ValueError, match="differ in length"):
        filter_affectnet_labels(expression[:3], valence, arousal)
