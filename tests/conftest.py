"""Shared fixtures: the procedural FLAME-format assets, generated once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def procedural_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A procedural FLAME-format asset folder (seed 0), read-only by convention."""
    from emoca_pipeline.assets import generate_procedural_assets

    return generate_procedural_assets(tmp_path_factory.mktemp("assets") / "procedural", seed=0)


@pytest.fixture(scope="session")
def synthetic_dataset(procedural_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (32 photos of 160 px, 4 per identity) on the procedural model."""
    from emoca_pipeline.synth import SynthSettings, generate_synthetic_dataset

    settings = SynthSettings(n_images=32, image_size=160, seed=0)
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), settings,
                                      assets=procedural_assets)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every test runs torch on one thread: the test machines have 2 shared cores, and
    torch's many small ops stall when threads are oversubscribed."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
