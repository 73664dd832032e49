"""FLAME forward time on CPU for batch 1, 64 and 1024.

Baselines measured in the same run (the machines are noisy, so read the ratios):
- smplx's FLAME layer (the reference implementation) on the same model and inputs;
- the blend-shape product alone (one (N, 150) x (150, V*3) matmul), the floor of any
  implementation.

    python benchmarks/bench_flame.py [--assets DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
from pathlib import Path

import torch
from timing import best_time


def smplx_layer(assets: Path, folder: Path, batch: int):
    import smplx

    from emoca_pipeline.flame.safe_pickle import safe_load_npy, safe_load_pickle, to_numpy

    (folder / "flame").mkdir(exist_ok=True)
    model = {k: v if isinstance(v, str) else to_numpy(v)
             for k, v in safe_load_pickle(assets / "generic_model.pkl").items()}
    with open(folder / "flame" / "FLAME_NEUTRAL.pkl", "wb") as f:
        pickle.dump(model, f)
    emb = safe_load_npy(assets / "landmark_embedding.npy")
    with open(folder / "flame" / "flame_static_embedding.pkl", "wb") as f:
        pickle.dump({"lmk_face_idx": to_numpy(emb["static_lmk_faces_idx"]),
                     "lmk_b_coords": to_numpy(emb["static_lmk_bary_coords"])}, f)
    return smplx.create(str(folder), model_type="flame", num_betas=100,
                        num_expression_coeffs=50, batch_size=batch)


def measure(layer, assets: Path, tmp: Path, batch: int) -> None:
    """Print one row: ours, smplx and the blend-shape matmul at this batch size."""
    gen = torch.Generator().manual_seed(0)
    shape = torch.randn(batch, 100, generator=gen)
    expression = torch.randn(batch, 50, generator=gen)
    pose = torch.randn(batch, 6, generator=gen) * 0.3
    repeats = 20 if batch < 1024 else 3
    ref = smplx_layer(assets, tmp, batch)
    dirs = layer.shapedirs.reshape(-1, 150).T.contiguous()
    betas = torch.cat([shape, expression], 1)
    with torch.inference_mode():
        ours = best_time(lambda: layer(shape, expression, pose), repeats)
        smplx_time = best_time(lambda: ref(
            betas=shape, expression=expression, global_orient=pose[:, :3],
            jaw_pose=pose[:, 3:]), repeats)
        blend = best_time(lambda: betas @ dirs, repeats)
    print(f"{batch:>6} {ours * 1e3:>9.2f} {smplx_time * 1e3:>9.2f} "
          f"{ours / smplx_time:>10.2f} {blend * 1e3:>9.2f} {ours / blend:>10.2f} "
          f"{batch / ours:>9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, help="FLAME asset folder (default: procedural)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from emoca_pipeline import flame
    from emoca_pipeline.assets import generate_procedural_assets

    with tempfile.TemporaryDirectory() as tmp:
        assets = args.assets or generate_procedural_assets(Path(tmp) / "assets", seed=0)
        layer = flame.create(assets, n_shape=100, n_exp=50)
        num_verts = layer.num_vertices
        print(f"FLAME forward, CPU, {args.threads} threads, V={num_verts}, float32")
        print(f"{'batch':>6} {'ours ms':>9} {'smplx ms':>9} {'ours/smplx':>10} "
              f"{'blend ms':>9} {'ours/blend':>10} {'meshes/s':>9}")
        for batch in (1, 64, 1024):
            measure(layer, assets, Path(tmp), batch)


if __name__ == "__main__":
    main()
