"""Procedural stand-ins for the licensed FLAME assets, in the official file formats.

    >>> from emoca_pipeline.assets import generate_procedural_assets
    >>> folder = generate_procedural_assets("assets/procedural", seed=0)

See :mod:`emoca_pipeline.assets.procedural` for the files and what the model is.
"""

from emoca_pipeline.assets.procedural import ASSET_FILES, TEXTURE_FILE, generate_procedural_assets
from emoca_pipeline.assets.sample_photos import write_sample_photos

__all__ = ["ASSET_FILES", "TEXTURE_FILE", "generate_procedural_assets", "write_sample_photos"]
