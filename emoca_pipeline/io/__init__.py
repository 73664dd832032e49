"""File input and output shared by every stage."""

from emoca_pipeline.io.atomic import atomic_output, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_output", "atomic_write_bytes", "atomic_write_text"]
