"""FRNet (VGGFace2 ResNet-50) against an independent functional reference, the weight
converters, and DECA's VGGFace2 identity loss."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from emoca_pipeline.flame.safe_pickle import UnsafePickleError
from emoca_pipeline.models.converters import (
    convert_emotion_weights,
    emotion_state_from_emocnn,
    load_frnet_weights,
    load_vggface2_pickle,
)
from emoca_pipeline.models.emotion import EmotionImageNet
from emoca_pipeline.models.frnet import FRNetResNet50

BLOCKS = {1: 3, 2: 4, 3: 6, 4: 3}
WIDTHS = {1: 64, 2: 128, 3: 256, 4: 512}


def random_vggface2_weights(seed: int = 0, with_fc: bool = True) -> dict[str, np.ndarray]:
    """A dict in the layout of ``resnet50_ft_weight.pkl`` (numpy float32, ``fc`` of 8631
    identities included), written out from the original's layer list, not from our module."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}

    def conv(name: str, out_c: int, in_c: int, k: int) -> None:
        std = math.sqrt(2.0 / (k * k * out_c))
        weights[f"{name}.weight"] = rng.normal(0, std, (out_c, in_c, k, k)).astype(np.float32)

    def bn(name: str, c: int) -> None:
        weights[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        weights[f"{name}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
        weights[f"{name}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
        weights[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for layer in range(1, 5):
        planes = WIDTHS[layer]
        for block in range(BLOCKS[layer]):
            p = f"layer{layer}.{block}"
            conv(f"{p}.conv1", planes, inplanes, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4)
            if block == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    if with_fc:
        weights["fc.weight"] = rng.normal(0, 0.01, (8631, 2048)).astype(np.float32)
        weights["fc.bias"] = np.zeros(8631, np.float32)
    return weights


def reference_frnet_features(w: dict[str, np.ndarray], x: torch.Tensor) -> torch.Tensor:
    """The original FRNet forward (gdl/layers/losses/FRNet.py) written out with functional
    calls, in float64: stride on the first 1x1 conv of a block, MaxPool2d(3, 2, 0,
    ceil_mode=True), AvgPool2d(7, stride=1)."""
    t = {k: torch.from_numpy(v).double() for k, v in w.items()}

    def bn(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(h, t[f"{name}.running_mean"], t[f"{name}.running_var"],
                            t[f"{name}.weight"], t[f"{name}.bias"], training=False, eps=1e-5)

    h = F.relu(bn(F.conv2d(x, t["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for layer in range(1, 5):
        for block in range(BLOCKS[layer]):
            p = f"layer{layer}.{block}"
            stride = 2 if (block == 0 and layer > 1) else 1
            out = F.relu(bn(F.conv2d(h, t[f"{p}.conv1.weight"], stride=stride), f"{p}.bn1"))
            out = F.relu(bn(F.conv2d(out, t[f"{p}.conv2.weight"], padding=1), f"{p}.bn2"))
            out = bn(F.conv2d(out, t[f"{p}.conv3.weight"]), f"{p}.bn3")
            if block == 0:
                res = bn(F.conv2d(h, t[f"{p}.downsample.0.weight"], stride=stride),
                         f"{p}.downsample.1")
            else:
                res = h
            h = F.relu(out + res)
    return F.avg_pool2d(h, 7, stride=1).flatten(1)


@pytest.fixture(scope="module")
def vggface2_pkl(tmp_path_factory) -> tuple:
    weights = random_vggface2_weights()
    path = tmp_path_factory.mktemp("frnet") / "resnet50_ft_weight.pkl"
    with open(path, "wb") as f:  # the original file is a protocol-2 pickle of a dict
        pickle.dump(weights, f, protocol=2)
    return path, weights


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def expected(vggface2_pkl, images) -> torch.Tensor:
    """(2, 2048) float64 reference features of ``images``."""
    return reference_frnet_features(vggface2_pkl[1], images.double())


def test_frnet_matches_the_original_forward_after_conversion(vggface2_pkl, images,
                                                             expected) -> None:
    path, _ = vggface2_pkl
    model = FRNetResNet50().eval()
    model.load_state_dict(load_frnet_weights(path))
    assert expected.shape == (2, 2048)
    with torch.no_grad():
        got64 = model.double()(images.double())
        got32 = model.float()(images)
    scale = expected.abs().max().item()
    assert scale > 1e-3  # non-trivial features
    assert (got64 - expected).abs().max().item() <= 1e-10 * scale
    assert (got32.double() - expected).abs().max().item() <= 1e-5 * scale
    # The emotion network's trunk is this backbone by default, loading the .pkl directly.
    emotion = EmotionImageNet(weights_path=path).eval()
    with torch.no_grad():
        features = emotion.features(images)
    assert (features.double() - expected).abs().max().item() <= 1e-5 * scale


def test_torchvision_layout_gives_different_features_for_the_same_weights(vggface2_pkl,
                                                                          images,
                                                                          expected) -> None:
    path, _ = vggface2_pkl
    state = load_frnet_weights(path)
    tv = torchvision.models.resnet50(weights=None)
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(state)  # same names, same shapes: loads key for key ...
    with torch.no_grad():
        tv_features = tv.eval()(images).double()
    # ... but computes something else (stride on the 3x3, padded floor max-pool).
    rel = ((tv_features - expected).norm() / expected.norm()).item()
    assert rel > 0.05
    net = EmotionImageNet(backbone="torchvision")
    with pytest.raises(ValueError, match="need backbone='frnet'"):
        net.load_weights(path)


def test_vggface2_pickle_is_read_with_a_numpy_only_unpickler(tmp_path) -> None:
    bad = tmp_path / "evil.pkl"

    class Evil:
        def __reduce__(self):
            return (print, ("side effect",))

    with open(bad, "wb") as f:
        pickle.dump({"conv1.weight": Evil()}, f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*builtins\.print"):
        load_vggface2_pickle(bad)
    # torch tensors are not numpy: refused as well (the FLAME allowlist would take them).
    tensor_pkl = tmp_path / "tensor.pkl"
    with open(tensor_pkl, "wb") as f:
        pickle.dump({"conv1.weight": torch.zeros(1)}, f, protocol=2)
    with pytest.raises(UnsafePickleError, match="only numpy arrays"):
        load_vggface2_pickle(tensor_pkl)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        load_vggface2_pickle(tmp_path / "missing.pkl")


def test_converter_errors_name_the_file_and_the_key(tmp_path) -> None:
    weights = random_vggface2_weights(seed=3, with_fc=False)
    weights["layer1.0.conv2.weight"] = weights["layer1.0.conv2.weight"][:, :, :1, :1]
    path = tmp_path / "shapes.pkl"
    with open(path, "wb") as f:
        pickle.dump(weights, f, protocol=2)
    with pytest.raises(ValueError, match=r"shapes\.pkl: key 'layer1\.0\.conv2\.weight' has "
                                         r"shape \(64, 64, 1, 1\)"):
        load_frnet_weights(path)
    del weights["layer1.0.conv2.weight"]
    with open(path, "wb") as f:
        pickle.dump(weights, f, protocol=2)
    with pytest.raises(ValueError, match=r"missing key 'layer1\.0\.conv2\.weight'"):
        load_frnet_weights(path)
    weights["layer9.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=r"x\.pkl: unexpected key 'layer9\.weight'"):
        from emoca_pipeline.models.converters import frnet_state_from_vggface2

        frnet_state_from_vggface2(weights, "x.pkl")


def test_original_emocnn_checkpoint_converts_and_round_trips(vggface2_pkl, images, expected,
                                                             tmp_path) -> None:
    path, weights = vggface2_pkl
    rng = np.random.default_rng(5)
    # The original EmoCnn Lightning checkpoint: backbone.* (with its unused fc) + linear.*
    state = {f"backbone.{k}": torch.from_numpy(v) for k, v in weights.items()}
    state["linear.weight"] = torch.from_numpy(rng.normal(0, 0.01, (10, 2048)).astype(np.float32))
    state["linear.bias"] = torch.from_numpy(rng.normal(0, 0.1, 10).astype(np.float32))
    ckpt = tmp_path / "emocnn.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, ckpt)
    net = EmotionImageNet(weights_path=ckpt).eval()
    logits = expected @ state["linear.weight"].double().T + state["linear.bias"].double()
    with torch.no_grad():
        out = net(images)
    scale = expected.abs().max().item()
    assert (out.features.double() - expected).abs().max().item() <= 1e-5 * scale
    np.testing.assert_allclose(out.valence.double(), logits[:, 8], rtol=1e-4,
                               atol=1e-5 * logits.abs().max().item())
    np.testing.assert_allclose(out.expr_logits.double(), torch.log_softmax(logits[:, :8], 1),
                               rtol=1e-4, atol=1e-4)
    # Converting to this package's format gives a file that loads strictly and agrees.
    converted = convert_emotion_weights(ckpt, tmp_path / "out" / "emotion.pt")
    again = EmotionImageNet(weights_path=converted).eval()
    with torch.no_grad():
        assert torch.equal(again(images).features, out.features)
    with pytest.raises(ValueError, match=r"emocnn\.ckpt: key 'linear\.weight' has 10 outputs, "
                                         r"expected 11"):
        EmotionImageNet(9, weights_path=ckpt)
    state["loss.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"bad\.ckpt: unexpected key 'loss\.extra'"):
        emotion_state_from_emocnn(state, "bad.ckpt")


def test_identity_loss_is_deca_s_vggface2_loss(vggface2_pkl, tmp_path) -> None:
    from emoca_pipeline.losses.identity import VGGFace2IdentityLoss

    path, weights = vggface2_pkl
    loss = VGGFace2IdentityLoss(path)
    g = torch.Generator().manual_seed(7)
    target = torch.rand(2, 3, 224, 224, generator=g)
    generated = (0.7 * target + 0.3 * torch.rand(2, 3, 224, 224, generator=g))
    generated.requires_grad_(True)

    def by_hand(images: torch.Tensor) -> torch.Tensor:
        # DECA lossfunc.py VGGFace2Loss.transform + reg_features, step by step.
        x = images.detach().double().numpy()
        bgr = x[:, ::-1] * 255.0 - np.array([91.4953, 103.8827, 131.0912]).reshape(1, 3, 1, 1)
        crop = torch.from_numpy(np.ascontiguousarray(bgr[:, :, 10:214, 10:214]))
        resized = F.interpolate(crop * 2.0 - 1.0, [224, 224], mode="bilinear",
                                align_corners=False)
        return reference_frnet_features(weights, resized)

    a, b = by_hand(generated), by_hand(target)
    expected = (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean().item()
    got = loss(generated, target)
    assert got.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert expected > 1e-4
    got.backward()
    assert generated.grad is not None and generated.grad.abs().sum() > 0
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(FileNotFoundError, match=r"VGGFace2 weights not found at .*nope\.pkl: "
                                                r"the identity loss needs"):
        VGGFace2IdentityLoss(tmp_path / "nope.pkl")
