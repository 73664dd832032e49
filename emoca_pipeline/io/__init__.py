"""File input and output shared by every stage."""

from emoca_pipeline.io.atomic import atomic_output, atomic_write_bytes, atomic_write_text
from emoca_pipeline.io.images import DecodedImage, image_id, read_image
from emoca_pipeline.io.obj import ObjMesh, load_obj, save_obj

__all__ = [
    "DecodedImage",
    "ObjMesh",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "image_id",
    "load_obj",
    "read_image",
    "save_obj",
]
