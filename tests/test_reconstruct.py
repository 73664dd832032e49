"""``emoca reconstruct``: the synthetic test split, folders, videos, sharding, kill-and-resume,
per-face failures and the CLI's errors.

The model is EMOCA at 64 px on the procedural FLAME assets, freshly built with E_flame's head
set so that the mean face fills the crop (training it, even for a few steps, takes minutes on
the shared 2-core machines); its landmarks land within a face's size of the true ones.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from emoca_pipeline.cli import main
from emoca_pipeline.inference import (
    ReconstructSettings,
    load_model,
    read_reconstructions,
    reconstruct,
)

IMAGE_SIZE = 64
FAST = {"workers": 0, "batch_size": 8, "part_size": 4}


@pytest.fixture(scope="module")
def table(synthetic_dataset: Path) -> Path:
    """The synthetic table (paths relative to its folder)."""
    return synthetic_dataset / "synthetic.parquet"


@pytest.fixture(scope="module")
def model_path(procedural_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built EMOCA on the procedural assets whose head puts the mean face in the
    middle of the crop (camera scale 7), saved as training saves it."""
    from emoca_pipeline.models.emoca import (
        EmocaModel,
        EmocaModelSettings,
        save_emoca_checkpoint,
    )

    torch.manual_seed(0)
    model = EmocaModel.from_assets(procedural_assets, EmocaModelSettings(image_size=IMAGE_SIZE),
                                   use_texture=False)
    model.init_flame_head([7.0, 0.0, 0.0])
    return save_emoca_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", model.eval(),
                                 extra={"name": "reconstruct-test", "stage": "coarse"})


@pytest.fixture(scope="module")
def loaded(model_path: Path):
    return load_model(model_path)


def _rows(table: pa.Table) -> list[dict]:
    """Rows sorted by (path, face_index)."""
    return sorted(table.to_pylist(), key=lambda r: (r["path"], r["face_index"] or 0))


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


# ------------------------------------------------------------------------------ tables


def test_synthetic_test_split_reconstructs(table: Path, model_path: Path, loaded,
                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    settings = ReconstructSettings(split="test", save=("overlays",), **FAST)
    result = reconstruct(table, out, loaded, settings)
    data = read_reconstructions(out)
    source = pq.read_table(table)
    test = source.filter(pa.compute.equal(source.column("split"), "test"))
    assert result.rows == data.num_rows == test.num_rows > 0
    assert set(data.column("status").to_pylist()) == {"ok"}
    assert data.column("path").to_pylist() == test.column("path").to_pylist()
    widths = {"shape": 100, "tex": 50, "exp": 50, "pose": 6, "cam": 3, "light": 27,
              "detail": 128, "crop_transform": 9, "landmarks": 136, "mediapipe_landmarks": 210}
    for name, width in widths.items():
        values = np.asarray(data.column(name).to_pylist())
        assert values.shape == (data.num_rows, width), name
        if name != "mediapipe_landmarks":  # the procedural assets have no MediaPipe embedding
            assert np.isfinite(values).all(), name
    # Labels pass through (identity as a string).
    assert data.column("identity").to_pylist() == [str(i) for i in test.column("identity")
                                                   .to_pylist()]
    assert data.column("valence").to_pylist() == pytest.approx(test.column("valence").to_pylist())
    # Landmarks are in the photo's pixels, near the true ones (within a face's size).
    size = source.column("width")[0].as_py()
    predicted = np.asarray(data.column("landmarks").to_pylist()).reshape(-1, 68, 2)
    truth = np.asarray(test.column("landmarks").to_pylist()).reshape(-1, 68, 2)
    assert predicted.min() >= 0 and predicted.max() <= size - 1
    face_size = (truth.max(axis=1) - truth.min(axis=1)).mean(axis=1)
    error = np.linalg.norm(predicted - truth, axis=2).mean(axis=1)
    assert (error < 0.35 * face_size).all(), (error / face_size).round(3)
    # The crop transform maps the truth into the model's crop.
    transform = np.asarray(data.column("crop_transform")[0].as_py()).reshape(3, 3)
    crop_points = truth[0] @ transform[:2, :2].T + transform[:2, 2]
    assert crop_points.min() > 0 and crop_points.max() < IMAGE_SIZE - 1
    meta = data.schema.metadata
    assert meta[b"checkpoint_sha256"].decode() == hashlib.sha256(model_path.read_bytes()
                                                                 ).hexdigest()
    assert meta[b"model_id"] == b"reconstruct-test-coarse"
    overlays = sorted((out / "overlays" / "images").glob("*.jpg"))
    assert len(overlays) == data.num_rows
    photo = cv2.imread(str(overlays[0]))
    original = cv2.imread(str(table.parent / test.column("path")[0].as_py()))
    assert photo.shape == original.shape and np.abs(photo.astype(int) - original).max() > 50
    # A rerun finds the shard finished.
    again = reconstruct(table, out, loaded, settings)
    assert again.skipped and again.rows == result.rows


def test_bad_rows_pass_through_and_a_nan_face_is_a_status_row(
        table: Path, model_path: Path, tmp_path: Path) -> None:
    """A detection-style table: a data-stage status, a face without landmarks or box, a black
    photo and a real one. E_flame's first convolution x 1e38 overflows on any lit pixel
    (inf - inf = NaN) but gives 0 on the black photo: in one batch, only that face fails."""
    source = pq.read_table(table).slice(0, 2)
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((160, 160, 3), np.uint8))
    lmk = source.column("landmarks").to_pylist()
    nan = [float("nan")] * 136
    rows = pa.table({
        "path": [str(black), str(table.parent / source["path"][1].as_py()), "gone.png",
                 str(black)],
        "status": ["ok", "ok", "no_face", "ok"],
        "reason": ["", "", "", ""],
        "landmarks": pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray(lmk[0] + lmk[1] + nan + nan, np.float32)), 136),
    })
    pq.write_table(rows, tmp_path / "faces.parquet")
    model = load_model(model_path)
    with torch.no_grad():
        model.model.E_flame.encoder.conv1.weight.mul_(1e38)
    reconstruct(tmp_path / "faces.parquet", tmp_path / "out", model,
                ReconstructSettings(**FAST))
    data = read_reconstructions(tmp_path / "out")
    status = data.column("status").to_pylist()
    assert status[0] == "ok"
    assert status[1].startswith("forward_error: non-finite") and "shape" in status[1]
    assert status[2:] == ["no_face", "crop_error: no finite landmarks or box"]
    shape = np.asarray(data.column("shape").to_pylist())
    assert np.isfinite(shape[0]).all() and np.isnan(shape[1:]).all()
    assert data.column("face_index").to_pylist() == [0, 0, 0, 0]


def test_two_shards_equal_one_run_whatever_the_workers(table: Path, loaded,
                                                       tmp_path: Path) -> None:
    one = reconstruct(table, tmp_path / "one", loaded,
                      ReconstructSettings(split="val", precision="fp32", **FAST))
    for shard, workers in ((0, 0), (1, 2)):
        settings = ReconstructSettings(split="val", shard=shard, num_shards=2,
                                       precision="fp32", **{**FAST, "workers": workers})
        reconstruct(table, tmp_path / "two", loaded, settings)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "shard-00000-of-00002.parquet", "shard-00001-of-00002.parquet"]
    two = read_reconstructions(tmp_path / "two")
    assert one.rows == two.num_rows
    # Equal up to float rounding: the batches hold other faces, and oneDNN's convolutions
    # round differently for other batch sizes (a resumed shard repeats its batches exactly).
    expected, got = _rows(read_reconstructions(tmp_path / "one")), _rows(two)
    floats = {k for k, v in expected[0].items() if isinstance(v, list)}
    for a, b in zip(expected, got, strict=True):
        assert {k: v for k, v in a.items() if k not in floats} == \
            {k: v for k, v in b.items() if k not in floats}
        for key in floats:
            assert np.allclose(np.asarray(a[key], float), np.asarray(b[key], float),
                               rtol=1e-4, atol=1e-5, equal_nan=True), key


def test_kill_mid_shard_then_rerun_gives_the_same_rows(table: Path, model_path: Path, loaded,
                                                       tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    args = [sys.executable, "-m", "emoca_pipeline", "reconstruct", str(table),
            str(tmp_path / "killed"), "--model", str(model_path), "--workers", "1",
            "--batch-size", "2", "--part-size", "2", "--threads", "1"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = tmp_path / "killed" / ".shard-00000-of-00001.parts"
    deadline = time.monotonic() + 300
    while not (parts / "part-00001.parquet").exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no part file after 300 s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "shard-00000-of-00001.parquet").exists()
    finished = len(list(parts.glob("part-*.parquet")))
    settings = ReconstructSettings(workers=1, batch_size=2, part_size=2)
    with caplog.at_level("INFO", logger="emoca_pipeline.inference.reconstruct"):
        reconstruct(table, tmp_path / "killed", loaded, settings)
    assert f"resuming after {finished} finished parts" in caplog.text
    assert not parts.exists()
    reconstruct(table, tmp_path / "whole", loaded, settings)
    killed = read_reconstructions(tmp_path / "killed")
    whole = read_reconstructions(tmp_path / "whole")
    assert killed.num_rows == whole.num_rows == pq.read_metadata(table).num_rows
    assert killed.to_pylist() == whole.to_pylist()


# ------------------------------------------------------------------------------ folder, video


def test_folder_with_a_real_face_a_broken_file_and_no_face(loaded, tmp_path: Path) -> None:
    from skimage import data

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    _write_rgb(folder / "astronaut.jpg", _astronaut())
    _write_rgb(folder / "sub" / "coffee.png", data.coffee())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    reconstruct(folder, out, loaded, ReconstructSettings(workers=1, save=(
        "obj", "renders", "overlays")))
    rows = read_reconstructions(out).to_pylist()
    assert [r["path"] for r in rows] == ["astronaut.jpg", "broken.png", "sub/coffee.png"]
    assert rows[0]["status"] == "ok" and rows[0]["face_index"] == 0
    assert rows[1]["status"].startswith("decode_error") and rows[1]["face_index"] is None
    assert rows[2]["status"] == "no_face" and (rows[2]["width"], rows[2]["height"]) == (600, 400)
    points = np.asarray(rows[0]["landmarks"]).reshape(68, 2)
    assert 100 < points[:, 0].mean() < 300 and 50 < points[:, 1].mean() < 250  # her face
    for name in ("obj/astronaut_face0.obj", "obj/astronaut_face0_detail.obj",
                 "obj/astronaut_face0.mtl", "obj/astronaut_face0.png",
                 "renders/astronaut_face0_shape.png", "renders/astronaut_face0_detail.png",
                 "renders/astronaut_face0_shaded.png", "overlays/astronaut.jpg"):
        assert (out / name).is_file(), name
    from emoca_pipeline.io import load_obj

    mesh = load_obj(out / "obj" / "astronaut_face0.obj")
    assert mesh.verts.shape == (loaded.model.flame.v_template.shape[0], 3)
    assert mesh.uvs is not None and mesh.face_uvs is not None
    assert (out / "obj" / "astronaut_face0.obj").read_text().startswith(
        "mtllib astronaut_face0.mtl\n")
    detail = load_obj(out / "obj" / "astronaut_face0_detail.obj")
    assert detail.verts.shape[0] > mesh.verts.shape[0] and np.isfinite(detail.verts).all()


def test_video_frames_and_overlay_video(loaded, tmp_path: Path) -> None:
    """Six frames of the astronaut drifting right; the last one is black (no face)."""
    photo = cv2.resize(_astronaut(), (256, 256))
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (256, 256))
    for k in range(6):
        frame = np.roll(photo, 4 * k, axis=1) if k < 5 else np.zeros_like(photo)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "out"
    reconstruct(video, out, loaded, ReconstructSettings(workers=1, detail=False,
                                                        save=("overlays",)))
    data = read_reconstructions(out)
    assert data.column("frame").to_pylist() == list(range(6))
    assert data.column("path").to_pylist() == [f"clip.mp4#frame={k}" for k in range(6)]
    assert data.column("status").to_pylist() == ["ok"] * 5 + ["no_face"]
    assert np.isnan(np.asarray(data.column("detail").to_pylist())).all()  # --no-detail
    x = np.asarray(data.column("landmarks").to_pylist())[:5, 0::2].mean(axis=1)
    assert np.all(np.diff(x) > 0)  # the face drifts right, so do the landmarks
    capture = cv2.VideoCapture(str(out / "overlays" / "clip.overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    capture.release()


# ------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize(("extra", "message"), [
    (["--shard", "2/2"], "--shard: expected I/N with 0 <= I < N, got '2/2'"),
    (["--save", "obj,mesh"], "--save: unknown item 'mesh'; choose from obj,renders,overlays"),
    (["--model", "missing.pt"], "--model missing.pt: no such model file"),
])
def test_cli_errors_are_one_line(extra: list[str], message: str, table: Path, model_path: Path,
                                 tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["reconstruct", str(table), str(tmp_path / "out"), "--model", str(model_path), *extra]
    assert main(args) == 2
    assert capsys.readouterr().err == f"emoca: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_cli_unreadable_input(model_path: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("x")
    assert main(["reconstruct", str(tmp_path / "notes.txt"), str(tmp_path / "out"),
                 "--model", str(model_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emoca: error: ") and "not a Parquet table or a video" in err
    assert err.count("\n") == 1
