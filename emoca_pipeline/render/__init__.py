"""Differentiable mesh rendering with DECA/pytorch3d semantics, in pure PyTorch.

- :mod:`.rasterizer`: :func:`rasterize_meshes` (CPU and CUDA; optional pytorch3d backend).
- :mod:`.shading`: normals, attribute interpolation, SH / directional / point lighting.
- :mod:`.camera`: DECA's orthographic camera and the screen <-> pixel conventions.
- :mod:`.renderer`: :class:`MeshRenderer` (DECA's ``SRenderY``) and :func:`overlay_on_image`.
"""

from emoca_pipeline.render.camera import (
    batch_orth_proj,
    ndc_to_pixels,
    orthographic_project,
    pixels_to_ndc,
    project_landmarks,
)
from emoca_pipeline.render.rasterizer import (
    Fragments,
    RasterSettings,
    pixel_centers,
    pytorch3d_available,
    rasterize_meshes,
)
from emoca_pipeline.render.renderer import (
    DECA_SHAPE_LIGHTS,
    MeshRenderer,
    RenderOutput,
    ShapeRenderOutput,
    dense_grid_faces,
    overlay_on_image,
)
from emoca_pipeline.render.shading import (
    SH_CONSTANT_FACTORS,
    directional_shading,
    face_normals,
    face_vertices,
    interpolate_face_attributes,
    interpolate_vertex_attributes,
    point_shading,
    sample_texture,
    sh_basis,
    sh_shading,
    vertex_normals,
)

__all__ = [
    "DECA_SHAPE_LIGHTS",
    "SH_CONSTANT_FACTORS",
    "Fragments",
    "MeshRenderer",
    "RasterSettings",
    "RenderOutput",
    "ShapeRenderOutput",
    "batch_orth_proj",
    "dense_grid_faces",
    "directional_shading",
    "face_normals",
    "face_vertices",
    "interpolate_face_attributes",
    "interpolate_vertex_attributes",
    "ndc_to_pixels",
    "orthographic_project",
    "overlay_on_image",
    "pixel_centers",
    "pixels_to_ndc",
    "point_shading",
    "project_landmarks",
    "pytorch3d_available",
    "rasterize_meshes",
    "sample_texture",
    "sh_basis",
    "sh_shading",
    "vertex_normals",
]
