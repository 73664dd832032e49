"""Shared fixtures: the procedural FLAME-format assets, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def procedural_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A procedural FLAME-format asset folder (seed 0), read-only by convention."""
    from emoca_pipeline.assets import generate_procedural_assets

    return generate_procedural_assets(tmp_path_factory.mktemp("assets") / "procedural", seed=0)
