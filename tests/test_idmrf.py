"""Our ID-MRF loss against an independent port of DECA's IDMRFLoss
(decalib/utils/lossfunc.py:339-450), with a saved randomly initialised VGG19."""

from __future__ import annotations

from functools import reduce

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from emoca_pipeline.losses.emoca import IDMRFLoss


class DecaVGG19FeatLayer(nn.Module):
    """DECA's VGG19FeatLayer, with the weights from a file instead of a download."""

    def __init__(self, state: dict) -> None:
        super().__init__()
        vgg = torchvision.models.vgg19(weights=None)
        vgg.load_state_dict(state)
        self.vgg19 = vgg.features.eval()
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def forward(self, x):
        out = {}
        x = x - self.mean
        x = x / self.std
        ci = 1
        ri = 0
        for layer in self.vgg19.children():
            if isinstance(layer, nn.Conv2d):
                ri += 1
                name = f"conv{ci}_{ri}"
            elif isinstance(layer, nn.ReLU):
                ri += 1
                name = f"relu{ci}_{ri}"
                layer = nn.ReLU(inplace=False)
            elif isinstance(layer, nn.MaxPool2d):
                ri = 0
                name = f"pool_{ci}"
                ci += 1
            else:
                raise RuntimeError(layer.__class__.__name__)
            x = layer(x)
            out[name] = x
        return out


class DecaIDMRFLoss(nn.Module):
    """DECA's IDMRFLoss: per-image conv2d against 1x1 target patches."""

    def __init__(self, state: dict) -> None:
        super().__init__()
        self.featlayer = DecaVGG19FeatLayer(state)
        self.feat_style_layers = {"relu3_2": 1.0, "relu4_2": 1.0}
        self.feat_content_layers = {"relu4_2": 1.0}
        self.bias = 1.0
        self.nn_stretch_sigma = 0.5
        self.lambda_style = 1.0
        self.lambda_content = 1.0

    def sum_normalize(self, featmaps):
        return featmaps / torch.sum(featmaps, dim=1, keepdim=True)

    def patch_extraction(self, featmaps):
        patches = featmaps.unfold(2, 1, 1).unfold(3, 1, 1).permute(0, 2, 3, 1, 4, 5)
        dims = patches.size()
        return patches.reshape(-1, dims[3], dims[4], dims[5])

    def compute_relative_distances(self, cdist):
        return cdist / (torch.min(cdist, dim=1, keepdim=True)[0] + 1e-5)

    def exp_norm_relative_dist(self, relative_dist):
        return self.sum_normalize(torch.exp((self.bias - relative_dist) / self.nn_stretch_sigma))

    def mrf_loss(self, gen, tar):
        mean_t = torch.mean(tar, 1, keepdim=True)
        gen_feats, tar_feats = gen - mean_t, tar - mean_t
        gen_normalized = gen_feats / torch.norm(gen_feats, p=2, dim=1, keepdim=True)
        tar_normalized = tar_feats / torch.norm(tar_feats, p=2, dim=1, keepdim=True)
        cosine = []
        for i in range(tar.size(0)):
            patches = self.patch_extraction(tar_normalized[i:i + 1])
            cosine.append(F.conv2d(gen_normalized[i:i + 1], patches))
        cosine_dist = torch.cat(cosine, dim=0)
        rela_dist = self.exp_norm_relative_dist(
            self.compute_relative_distances(-(cosine_dist - 1) / 2))
        dims = rela_dist.size()
        k_max_nc = torch.max(rela_dist.view(dims[0], dims[1], -1), dim=2)[0]
        return torch.sum(-torch.log(torch.mean(k_max_nc, dim=1)))

    def forward(self, gen, tar):
        gen_f, tar_f = self.featlayer(gen), self.featlayer(tar)
        style = reduce(lambda x, y: x + y, [w * self.mrf_loss(gen_f[k], tar_f[k])
                                            for k, w in self.feat_style_layers.items()])
        content = reduce(lambda x, y: x + y, [w * self.mrf_loss(gen_f[k], tar_f[k])
                                              for k, w in self.feat_content_layers.items()])
        return style * self.lambda_style + content * self.lambda_content


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    torch.manual_seed(0)
    state = torchvision.models.vgg19(weights=None).state_dict()
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("size", [64, 96])
def test_idmrf_equals_deca_s(vgg19_file, size) -> None:
    path, state = vgg19_file
    ours = IDMRFLoss(path)
    assert ours.enabled
    reference = DecaIDMRFLoss(state)
    gen_gen = torch.Generator().manual_seed(size)
    target = torch.rand(2, 3, size, size, generator=gen_gen)
    generated = (target + 0.2 * torch.rand(2, 3, size, size, generator=gen_gen)).clamp(0, 1)
    generated.requires_grad_(True)
    with torch.no_grad():
        expected = reference(generated, target)
    got = ours(generated, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() > 0.01  # not the trivial identical-images case
    got.backward()
    assert generated.grad is not None and generated.grad.abs().sum() > 0
    # Identical images: each target patch finds itself.
    assert ours(target, target).item() == pytest.approx(reference(target, target).item(),
                                                        rel=1e-5, abs=1e-6)
