"""The NoW protocol on synthetic scans in the official layout.

Each subject's scan is its neutral procedural-FLAME mesh, subdivided (every vertex on the
surface), moved into millimetres by a known similarity (scale 1000, a rotation, a shift) and
displaced along its vertex normals by N(0, sigma^2) noise. The predictions are the clean
meshes. For noise small against the surface's curvature and triangles, a vertex displaced by
e along the normal lies |e| from the surface, so the errors are |e|: half-normal, with mean
sigma sqrt(2/pi), median sigma * 0.6745 (the normal's 75 % quantile) and std
sigma sqrt(1 - 2/pi). Without noise they are zero up to the optimiser's tolerance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy.spatial.transform import Rotation
from test_eval_synthetic import artifact_names, finished_run, workflow_parent

from emoca_pipeline.cli import main
from emoca_pipeline.evaluation.geometry import Similarity
from emoca_pipeline.evaluation.now import (
    crop_scan,
    evaluate_now,
    load_flame_for_now,
    now_landmarks,
    read_picked_points,
)
from emoca_pipeline.io.obj import save_obj

SUBJECTS = ("FaMoS_180424_03335_TA", "FaMoS_180426_03336_TA")
ENTRIES = [f"{SUBJECTS[0]}/multiview_neutral/IMG_0101.jpg",
           f"{SUBJECTS[0]}/selfie/IMG_0102.jpg",
           f"{SUBJECTS[1]}/multiview_neutral/IMG_0201.jpg"]
SCAN_MOVE = Similarity(1000.0, Rotation.from_rotvec([0.2, -0.4, 0.1]).as_matrix(),
                       np.array([15.0, -40.0, 1200.0]))


def subdivide(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint subdivision: every new vertex lies on the old surface."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]),
                    axis=1)
    unique, inverse = np.unique(edges, axis=0, return_inverse=True)
    mid = len(verts) + inverse.reshape(3, -1).T
    a, b, c = faces.T
    ab, bc, ca = mid.T
    new_faces = np.concatenate([np.stack(x, axis=1) for x in
                                ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
    return np.concatenate([verts, verts[unique].mean(axis=1)]), new_faces


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    face_normals = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]],
                            verts[faces[:, 2]] - verts[faces[:, 0]])
    normals = np.zeros_like(verts)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_normals)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def write_pp(path: Path, points: np.ndarray) -> None:
    lines = ['<!DOCTYPE PickedPoints>', '<PickedPoints>', ' <DocumentData>',
             '  <DateTime time="12:00:00" date="2019-01-01"/>', '  <User name="test"/>',
             '  <DataFileName name="scan.obj"/>', '  <templateName name=""/>', ' </DocumentData>']
    lines += [f' <point x="{x:.6f}" y="{y:.6f}" z="{z:.6f}" active="1" name="{i}"/>'
              for i, (x, y, z) in enumerate(points)]
    lines.append('</PickedPoints>')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_reconstructions(folder: Path, entries: list[str], shapes: np.ndarray) -> None:
    """A reconstruction shard in the `emoca reconstruct` contract (codes only matter here)."""
    from emoca_pipeline.inference.schema import reconstruction_schema

    widths = {"shape": 100, "tex": 50, "exp": 50, "pose": 6, "cam": 3, "light": 27,
              "detail": 128}
    schema = reconstruction_schema(widths, metadata={"table": "reconstructions",
                                                     "schema_version": "1",
                                                     "model_id": "test",
                                                     "checkpoint_sha256": "0" * 64})
    n = len(entries)

    def fsl(values: np.ndarray, kind: pa.DataType | None = None) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1),
                                                          kind or pa.float32()),
                                                 values.shape[1])

    columns = {
        "image_id": pa.array([f"id{i}" for i in range(n)]),
        "path": pa.array([f"NoW_Dataset/final_release_version/iphone_pictures/{e}"
                          for e in entries]),
        "frame": pa.nulls(n, pa.int32()), "width": pa.array([640] * n, pa.int32()),
        "height": pa.array([480] * n, pa.int32()), "face_index": pa.array([0] * n, pa.int16()),
        "status": pa.array(["ok"] * n),
    }
    for name, width in widths.items():
        values = shapes if name == "shape" else np.zeros((n, width))
        columns[name] = fsl(values.astype(np.float32))
    columns["crop_transform"] = fsl(np.tile(np.eye(3).reshape(1, 9), (n, 1)), pa.float64())
    columns["landmarks"] = fsl(np.zeros((n, 136), np.float32))
    columns["mediapipe_landmarks"] = fsl(np.zeros((n, 210), np.float32))
    table = pa.Table.from_pydict(columns, schema=schema)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "shard-00000-of-00001.parquet")


def make_now(root: Path, assets: Path, sigma: float, landmark_jitter: float = 0.0,
             seed: int = 0) -> tuple[Path, np.ndarray]:
    """A NoW dataset folder and a reconstruction folder for it; returns (recon, shapes)."""
    from emoca_pipeline.flame import create

    rng = np.random.default_rng(seed)
    flame = create(assets)
    shapes = rng.normal(size=(len(SUBJECTS), 100)).astype(np.float32) * 0.8
    verts, landmarks = now_landmarks(flame, shapes)
    faces = flame.faces.numpy()
    for subject, v, lmk in zip(SUBJECTS, verts, landmarks, strict=True):
        dense_v, dense_f = subdivide(v, faces)
        scan = SCAN_MOVE.apply(dense_v)
        scan += rng.normal(size=(len(scan), 1)) * sigma * vertex_normals(scan, dense_f)
        save_obj(root / "scans" / subject / f"{subject}_natural.obj", scan, dense_f)
        points = SCAN_MOVE.apply(lmk) + rng.normal(size=(7, 3)) * landmark_jitter
        write_pp(root / "scans_lmks_onlypp" / subject / f"{subject}_picked_points.pp", points)
    (root / "imagepathsvalidation.txt").write_text("\n".join(ENTRIES) + "\n")
    recon = root.parent / "recon"
    subject_of = {s: i for i, s in enumerate(SUBJECTS)}
    write_reconstructions(recon, ENTRIES, shapes[[subject_of[e.split("/")[0]]
                                                  for e in ENTRIES]])
    return recon, shapes


@pytest.fixture(scope="module")
def noisy_now(procedural_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("now_noisy") / "NoW"
    make_now(root, procedural_assets, sigma=0.4, landmark_jitter=1.0)
    return root


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path: the default MLflow store (./results/mlflow.db) lands there."""
    monkeypatch.chdir(tmp_path)


def run(args: list[str]) -> int:
    torch.set_num_threads(1)
    return main([str(a) for a in args])


def test_errors_are_at_the_noise_level(noisy_now: Path, procedural_assets: Path,
                                       capsys: pytest.CaptureFixture, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sigma = 0.4
    out = noisy_now.parent / "out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = workflow_parent(uri, tmp_path, "emoca-pipeline", monkeypatch)
    code = run(["eval", "now", "--reconstructions", noisy_now.parent / "recon", "--model",
                procedural_assets, "--now-root", noisy_now, "--out", out, "--name", "emoca",
                "--tracking-uri", uri])
    assert code == 0, capsys.readouterr().err
    for entry in ENTRIES:
        stem = out / "predictions" / Path(entry).with_suffix("")
        assert stem.with_suffix(".obj").is_file()
        assert np.load(stem.with_suffix(".npy")).shape == (7, 3)
    stats = json.loads((out / "now_table.json").read_text())["stats"]
    pooled = stats["all"]
    assert pooled["images"] == 3
    assert pooled["mean"] == pytest.approx(sigma * math.sqrt(2 / math.pi), rel=0.06)
    assert pooled["median"] == pytest.approx(sigma * 0.6745, rel=0.08)
    assert pooled["std"] == pytest.approx(sigma * math.sqrt(1 - 2 / math.pi), rel=0.1)
    assert set(stats) == {"all", "multiview_neutral", "selfie"}
    assert stats["multiview_neutral"]["images"] == 2 and stats["selfie"]["images"] == 1
    markdown = (out / "now_table.md").read_text()
    assert "| Challenge | Median (mm) | Mean (mm) | Std (mm) | Images |" in markdown
    assert f"| selfie | {stats['selfie']['median']:.2f} |" in markdown
    assert (out / "now_table.csv").read_text().startswith("challenge,")
    assert r"\toprule" in (out / "now_table.tex").read_text()
    assert (out / "now_cumulative_error.png").stat().st_size > 0

    client, tracked = finished_run(uri, "emoca-pipeline", "eval now emoca")
    assert tracked.data.tags["mlflow.parentRunId"] == parent
    assert tracked.data.metrics == pytest.approx(
        {f"{row}/{key}": stats[row][key] for row in stats for key in ("median", "mean", "std")})
    assert artifact_names(client, tracked) == {"now_table.csv", "now_table.md", "now_table.tex",
                                               "now_table.json", "now_cumulative_error.png"}


def test_errors_vanish_without_noise(procedural_assets: Path, tmp_path: Path) -> None:
    root = tmp_path / "NoW"
    recon, _ = make_now(root, procedural_assets, sigma=0.0, landmark_jitter=2.0, seed=1)
    from emoca_pipeline.evaluation.now import read_image_list, write_now_predictions

    flame = load_flame_for_now(procedural_assets)
    images = read_image_list(root / "imagepathsvalidation.txt")[:2]
    write_now_predictions(recon, flame, images, tmp_path / "pred")
    result = evaluate_now(tmp_path / "pred", root, tmp_path / "out", images=images)
    assert result.stats["all"]["mean"] < 1e-3  # mm, from a landmark fit off by ~2 mm
    assert result.stats["all"]["points"] > 1000


def test_crop_matches_the_official_rule() -> None:
    # eye corners at x = -45, -15, 15, 45; nose bottom 40 below the eyes
    lmk = np.array([[-45, 0, 0], [-15, 0, 0], [15, 0, 0], [45, 0, 0], [0, -40, 0],
                    [-25, -70, 0], [25, -70, 0]], dtype=float)
    centre = np.array([0.0, -40 + 0.3 * 40, 0.0])
    radius = 1.4 * (90 + 40) / 2
    points = np.array([centre + [radius - 0.01, 0, 0], centre + [0, 0, radius + 0.01]])
    mask, got_centre, got_radius = crop_scan(points, lmk)
    np.testing.assert_allclose(got_centre, centre)
    assert got_radius == pytest.approx(radius)
    assert mask.tolist() == [True, False]


def test_flame_from_a_checkpoint_equals_the_asset_folder(procedural_assets: Path,
                                                         tmp_path: Path) -> None:
    from emoca_pipeline.models.emoca import CHECKPOINT_FORMAT

    flame = load_flame_for_now(procedural_assets)
    state = {f"flame.{k}": v for k, v in flame.state_dict().items()}
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1,
                "settings": {"n_shape": 100, "n_exp": 50}, "state_dict": state},
               tmp_path / "model.pt")
    loaded = load_flame_for_now(tmp_path / "model.pt")
    shape = np.random.default_rng(0).normal(size=(2, 100)).astype(np.float32)
    v1, l1 = now_landmarks(flame, shape)
    v2, l2 = now_landmarks(loaded, shape)
    np.testing.assert_allclose(v1, v2, atol=1e-6)
    np.testing.assert_allclose(l1, l2, atol=1e-6)


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture()
def small_now(procedural_assets: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "NoW"
    recon, _ = make_now(root, procedural_assets, sigma=0.0)
    return root, recon


def expect_error(args: list[str], capsys: pytest.CaptureFixture, *fragments: str) -> str:
    assert run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any log lines
    assert err.startswith("emoca: error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_missing_scan_is_named(small_now: tuple[Path, Path], procedural_assets: Path,
                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, recon = small_now
    for scan in (root / "scans" / SUBJECTS[0]).glob("*.obj"):
        scan.unlink()
    expect_error(["eval", "now", "--reconstructions", recon, "--model", procedural_assets,
                  "--now-root", root, "--out", tmp_path / "out"], capsys,
                 str(root / "scans" / SUBJECTS[0]), "no scan")


def test_wrong_landmark_count_is_named(small_now: tuple[Path, Path], procedural_assets: Path,
                                       tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, recon = small_now
    pp = next((root / "scans_lmks_onlypp" / SUBJECTS[0]).glob("*.pp"))
    write_pp(pp, read_picked_points(pp)[:6])
    expect_error(["eval", "now", "--reconstructions", recon, "--model", procedural_assets,
                  "--now-root", root, "--out", tmp_path / "out"], capsys,
                 str(pp), "6 landmarks, NoW needs 7")


def test_mesh_without_faces_and_missing_prediction_are_named(
        small_now: tuple[Path, Path], procedural_assets: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    root, recon = small_now
    from emoca_pipeline.evaluation.now import read_image_list, write_now_predictions

    predictions = tmp_path / "pred"
    write_now_predictions(recon, load_flame_for_now(procedural_assets),
                          read_image_list(root / "imagepathsvalidation.txt"), predictions)
    stem = predictions / Path(ENTRIES[1]).with_suffix("")
    obj = stem.with_suffix(".obj")
    kept = obj.read_text()
    obj.write_text("".join(line + "\n" for line in kept.splitlines() if line.startswith("v ")))
    expect_error(["eval", "now", "--predictions", predictions, "--now-root", root, "--out",
                  tmp_path / "out"], capsys, str(obj), "no faces")
    obj.write_text(kept)
    stem.with_suffix(".npy").unlink()
    expect_error(["eval", "now", "--predictions", predictions, "--now-root", root, "--out",
                  tmp_path / "out"], capsys, str(stem.with_suffix(".npy")), "missing prediction")


def test_missing_reconstruction_is_named_unless_allowed(
        small_now: tuple[Path, Path], procedural_assets: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    root, recon = small_now
    listed = (root / "imagepathsvalidation.txt").read_text()
    extra = f"{SUBJECTS[1]}/selfie/IMG_0999.jpg"
    (root / "imagepathsvalidation.txt").write_text(listed + extra + "\n")
    args = ["eval", "now", "--reconstructions", recon, "--model", procedural_assets,
            "--now-root", root, "--out", tmp_path / "out"]
    expect_error(args, capsys, str(recon), extra, "--allow-missing")
    assert run(args + ["--allow-missing"]) == 0
    summary = json.loads((tmp_path / "out" / "now_table.json").read_text())
    assert summary["missing_images"] == 1 and summary["evaluated_images"] == 3
