"""Optional outputs of ``emoca reconstruct --save``: meshes, renders and overlays.

- ``obj``: ``OUT/obj/<name>_face<F>.obj`` (coarse FLAME mesh with FLAME's UVs) and
  ``..._detail.obj`` (the dense UV-grid mesh displaced by the detail map, the region of the
  UV face-eye mask), both textured like the original demo's ``save_obj``: the input crop
  unwrapped into UV space with the coarse geometry (:meth:`EmocaModel.uv_targets`), written
  as ``<name>_face<F>.png`` with an ``.mtl``.
- ``renders``: ``OUT/renders/<name>_face<F>_{shape,shaded,detail}.png`` at the model's input
  size (grey coarse geometry, the SH-lit textured render, grey geometry with detail normals).
- ``overlays``: ``OUT/overlays/<name>.jpg``: the coarse shape render of every face of an
  image pasted on the original photo through the inverse crop transform; for a video each
  frame goes to ``OUT/overlays/<video>/frame-000000.jpg`` and, when the shard is finished,
  into ``OUT/overlays/<video>.overlay.mp4`` (``...shard-I-of-N.mp4`` when sharded).

Every file is written atomically; a resumed run rewrites only the items it processes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from emoca_pipeline.io.atomic import atomic_output, atomic_write_text
from emoca_pipeline.io.obj import save_obj

__all__ = ["OutputWriter"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]")


def _write_image(path: Path, rgb: np.ndarray, quality: int = 92) -> None:
    with atomic_output(path) as tmp:
        params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix == ".jpg" else []
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
            raise OSError(f"{path}: OpenCV could not write the image")


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    array = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return np.rint(array * 255).astype(np.uint8)


def output_name(sample: Any) -> str:
    """A relative, ASCII file stem for an item: its key without extension, ``<video>/frame-N``
    for frames, or its image id when the key is absolute or leaves the folder."""
    item = sample.item
    if item.frame is not None:
        name = f"{Path(item.source).stem}/frame-{item.frame:06d}"
    else:
        key = Path(item.path)
        if key.is_absolute() or ".." in key.parts:
            name = f"{key.stem}-{(sample.image_id or '')[:12]}"
        else:
            name = key.with_suffix("").as_posix()
    return _UNSAFE.sub("_", name)


class OutputWriter:
    """Writes the ``--save`` outputs of each processed batch (main process)."""

    def __init__(self, model: Any, out: Path, save: Sequence[str], spec: Any,
                 settings: Any) -> None:
        self.model, self.out, self.save = model, Path(out), set(save)
        self.needs_photo = "overlays" in self.save
        self.detail = settings.detail
        self.shard, self.num_shards = settings.shard, settings.num_shards
        self.video = spec.path if spec.kind == "video" else None
        self.video_name = None if self.video is None else (
            f"{self.video.stem}.overlay.mp4" if settings.num_shards == 1 else
            f"{self.video.stem}.overlay.shard-{settings.shard:05d}-of-"
            f"{settings.num_shards:05d}.mp4")
        mask = model.render.uv_face_eye_mask[0, 0] > 0  # (uv, uv)
        size = mask.shape[-1]
        faces = model.render.dense_faces
        keep = mask.reshape(-1)[faces].all(dim=1)
        self.dense_faces = faces[keep].cpu().numpy()
        ys, xs = np.divmod(np.arange(size * size), size)
        self.dense_uvs = np.stack([(xs + 0.5) / size, 1 - (ys + 0.5) / size], axis=1)

    @torch.inference_mode()
    def write(self, samples: Sequence[Any], faces: Sequence[tuple[Any, Any]],
              forward: Any | None) -> None:
        """Outputs of the faces whose forward pass is ok, and overlays of ``samples``."""
        from emoca_pipeline.models.emoca import EmocaCodes

        ok = [i for i in range(len(faces)) if forward is not None and forward.errors[i] is None]
        renders: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if ok:
            model = self.model
            device = model.fixed_uv_dis.device
            codes = {name: torch.from_numpy(forward.codes[name][ok]).to(device)
                     for name in forward.codes}
            detail = codes["detail"] if self.detail and torch.isfinite(codes["detail"]).all() \
                else None
            codes = EmocaCodes(codes["shape"], codes["tex"], codes["exp"], codes["pose"],
                               codes["cam"], codes["light"].reshape(-1, 9, 3), detail)
            output = model.decode(codes)
            coarse = output.coarse
            shape = model.render.render_shape(coarse.vertices, coarse.trans_vertices)
            detail_shape = None
            if output.detail is not None:
                normals = F.grid_sample(output.detail.uv_detail_normals, coarse.grid,
                                        align_corners=False) * shape.alpha_images
                detail_shape = model.render.render_shape(
                    coarse.vertices, coarse.trans_vertices, detail_normal_images=normals)
            crops = np.stack([faces[i][1].crop for i in ok])
            images = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float() / 255
            for row, i in enumerate(ok):
                sample, face = faces[i]
                renders[id(face)] = (shape.images[row], shape.alpha_images[row])
                name = f"{output_name(sample)}_face{face.face_index}"
                if "renders" in self.save:
                    folder = self.out / "renders"
                    _write_image(folder / f"{name}_shape.png", _to_uint8(shape.images[row]))
                    _write_image(folder / f"{name}_shaded.png", _to_uint8(coarse.images[row]))
                    if detail_shape is not None:
                        _write_image(folder / f"{name}_detail.png",
                                     _to_uint8(detail_shape.images[row]))
            if "obj" in self.save:
                self._write_obj([faces[i] for i in ok], images, output)
        if "overlays" in self.save:
            for sample in samples:
                self._write_overlay(sample, renders)

    def _write_obj(self, faces: Sequence[tuple[Any, Any]], images: torch.Tensor,
                   output: Any) -> None:
        model, coarse = self.model, output.coarse
        texture = model.uv_targets(images, coarse).uv_texture_gt
        uvs = model.render.uvs.cpu().numpy()
        face_uvs = model.render.face_uvs.cpu().numpy()
        flame_faces = model.render.faces.cpu().numpy()
        dense = None
        if output.detail is not None:
            uv_normals = model.render.world2uv(coarse.normals)
            uv_z = output.detail.uv_z * model.render.uv_face_eye_mask
            dense = (output.detail.uv_coarse_vertices
                     + (uv_z + model.fixed_uv_dis[None, None]) * uv_normals)
        for row, (sample, face) in enumerate(faces):
            name = f"{output_name(sample)}_face{face.face_index}"
            path = self.out / "obj" / f"{name}.obj"
            material = Path(name).name
            _write_image(path.with_suffix(".png"), _to_uint8(texture[row]))
            atomic_write_text(path.with_suffix(".mtl"), "newmtl FaceTexture\n"
                              f"map_Kd {material}.png\n")
            save_obj(path, coarse.vertices[row].cpu().numpy(), flame_faces, uvs, face_uvs,
                     material=material)
            if dense is not None:
                verts = dense[row].permute(1, 2, 0).reshape(-1, 3).cpu().numpy()
                used, remap = np.unique(self.dense_faces, return_inverse=True)
                save_obj(path.with_name(f"{path.stem}_detail.obj"), verts[used],
                         remap.reshape(-1, 3), self.dense_uvs[used], remap.reshape(-1, 3),
                         material=material)

    def _write_overlay(self, sample: Any, renders: dict[int, tuple[torch.Tensor, torch.Tensor]]
                       ) -> None:
        if sample.photo is None:
            return
        drawn = [face for face in sample.faces if id(face) in renders]
        if not drawn and self.video is None:
            return
        photo = sample.photo
        for face in drawn:
            image, alpha = renders[id(face)]
            photo = _overlay(image, alpha, photo, face.transform)
        _write_image(self.out / "overlays" / f"{output_name(sample)}.jpg", photo)

    def finish(self) -> None:
        """Assemble a video's overlay frames into an mp4 (mp4v)."""
        if self.video is None or "overlays" not in self.save:
            return
        frames = [f for f in sorted((self.out / "overlays" / self.video.stem).glob("frame-*.jpg"))
                  if int(f.stem.removeprefix("frame-")) % self.num_shards == self.shard]
        if not frames:
            return
        capture = cv2.VideoCapture(str(self.video))
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        capture.release()
        first = cv2.imread(str(frames[0]))
        height, width = first.shape[:2]
        target = self.out / "overlays" / self.video_name
        with atomic_output(target) as tmp:
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                     (width, height))
            if not writer.isOpened():
                raise OSError(f"{target}: OpenCV cannot write mp4v video")
            for frame in frames:
                writer.write(cv2.imread(str(frame)))
            writer.release()


def _overlay(image: torch.Tensor, alpha: torch.Tensor, photo: np.ndarray,
             transform: np.ndarray) -> np.ndarray:
    from emoca_pipeline.render import overlay_on_image

    return overlay_on_image(image.float().cpu(), alpha.float().cpu(), photo, transform)
