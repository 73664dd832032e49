"""`emoca download` against a real HTTP server on 127.0.0.1 (Range support, scripted
failures), and `emoca check-data` on folders laid out like the licensed releases."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from emoca_pipeline.io.download import DownloadError, check_data, download

PAYLOAD = os.urandom(300_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # path -> list of behaviours, one popped per request ("ok" once the list is empty):
    # ok, truncate (Content-Length of the whole rest, half the bytes, then close),
    # error500, norange (ignore Range: 200 with the whole file).
    script: dict[str, list[str]]
    requests: list[tuple[str, str | None]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.server.requests.append((self.path, self.headers.get("Range")))
        if self.path == "/missing":
            self.send_error(404, "Not Found")
            return
        steps = self.server.script.get(self.path, [])
        step = steps.pop(0) if steps else "ok"
        if step == "error500":
            self.send_error(500, "Internal Server Error")
            return
        start = 0
        header = self.headers.get("Range")
        if header and step != "norange":
            start = int(header.removeprefix("bytes=").split("-")[0])
        if start >= len(PAYLOAD):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range",
                             f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        if step == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server() -> Iterator[tuple[str, _Server]]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.script, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    httpd.shutdown()
    httpd.server_close()


def _fast(url: str, out: Path, sha256: str = DIGEST, retries: int = 3) -> Path:
    return download(url, out, sha256, retries=retries, backoff=0.01, timeout=10)


def test_download_writes_the_file_and_a_rerun_fetches_nothing(server, tmp_path: Path) -> None:
    base, httpd = server
    out = tmp_path / "sub dir ü" / "clip.mp4"
    assert _fast(f"{base}/file", out) == out
    assert out.read_bytes() == PAYLOAD
    assert not out.with_name("clip.mp4.part").exists()
    assert len(httpd.requests) == 1
    _fast(f"{base}/file", out)
    assert len(httpd.requests) == 1  # present with the right checksum: no request


def test_truncated_transfer_resumes_with_a_range_request(server, tmp_path: Path) -> None:
    base, httpd = server
    httpd.script["/file"] = ["truncate", "truncate"]
    out = tmp_path / "clip.mp4"
    _fast(f"{base}/file", out)
    assert out.read_bytes() == PAYLOAD
    ranges = [r for _, r in httpd.requests]
    assert ranges[0] is None
    # each retry asks for exactly the bytes after what arrived
    assert ranges[1] == f"bytes={len(PAYLOAD) // 2}-"
    assert ranges[2] == f"bytes={len(PAYLOAD) // 2 + (len(PAYLOAD) - len(PAYLOAD) // 2) // 2}-"
    assert len(httpd.requests) == 3


def test_a_failed_transfer_keeps_the_part_and_a_rerun_resumes(server, tmp_path: Path) -> None:
    base, httpd = server
    httpd.script["/file"] = ["truncate", "error500"]
    out = tmp_path / "clip.mp4"
    with pytest.raises(DownloadError, match=r"failed after 2 attempts: HTTP 500.*rerun resumes"):
        _fast(f"{base}/file", out, retries=1)
    part = tmp_path / "clip.mp4.part"
    assert not out.exists() and part.stat().st_size == len(PAYLOAD) // 2
    _fast(f"{base}/file", out)  # a later run (e.g. Snakemake's rerun) completes it
    assert out.read_bytes() == PAYLOAD and not part.exists()
    assert httpd.requests[-1] == ("/file", f"bytes={len(PAYLOAD) // 2}-")


def test_server_error_mid_file_is_retried(server, tmp_path: Path) -> None:
    base, httpd = server
    httpd.script["/file"] = ["truncate", "error500", "error500"]
    out = tmp_path / "clip.mp4"
    _fast(f"{base}/file", out)
    assert out.read_bytes() == PAYLOAD
    assert len(httpd.requests) == 4


def test_a_server_that_ignores_ranges_restarts_from_zero(server, tmp_path: Path) -> None:
    base, httpd = server
    httpd.script["/file"] = ["truncate", "norange"]
    out = tmp_path / "clip.mp4"
    _fast(f"{base}/file", out)
    assert out.read_bytes() == PAYLOAD  # not the first half twice


def test_checksum_mismatch_leaves_no_file(server, tmp_path: Path) -> None:
    base, _ = server
    out = tmp_path / "clip.mp4"
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=f"sha256 mismatch for {out}: expected {wrong}, "
                                            f"got {DIGEST}; the downloaded file was removed"):
        _fast(f"{base}/file", out, sha256=wrong)
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_resumed_part_is_caught_by_the_checksum(server, tmp_path: Path) -> None:
    base, _ = server
    out = tmp_path / "clip.mp4"
    (tmp_path / "clip.mp4.part").write_bytes(b"x" * 1000)  # not the file's first bytes
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        _fast(f"{base}/file", out)
    assert list(tmp_path.iterdir()) == []
    _fast(f"{base}/file", out)  # and the next run starts clean
    assert out.read_bytes() == PAYLOAD


def test_404_fails_at_once_with_the_url(server, tmp_path: Path) -> None:
    base, httpd = server
    with pytest.raises(DownloadError, match=rf"^{base}/missing: HTTP 404 Not Found$"):
        _fast(f"{base}/missing", tmp_path / "x.bin")
    assert len(httpd.requests) == 1 and list(tmp_path.iterdir()) == []


def test_an_existing_file_with_another_checksum_is_left_alone(server, tmp_path: Path) -> None:
    base, httpd = server
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"the user's own file")
    with pytest.raises(ValueError, match="exists with sha256 .* move it away"):
        _fast(f"{base}/file", out)
    assert out.read_bytes() == b"the user's own file" and httpd.requests == []


def test_cli_download_and_its_errors(server, tmp_path: Path) -> None:
    base, _ = server
    out = tmp_path / "clip.mp4"
    run = [sys.executable, "-m", "emoca_pipeline", "download"]
    ok = subprocess.run([*run, f"{base}/file", str(out), "--sha256", DIGEST.upper()],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert out.read_bytes() == PAYLOAD
    bad = subprocess.run([*run, f"{base}/missing", str(tmp_path / "y"), "--sha256", DIGEST],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == f"emoca: error: {base}/missing: HTTP 404 " \
        "Not Found"
    short = subprocess.run([*run, f"{base}/file", str(tmp_path / "z"), "--sha256", "abc"],
                           capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "sha256: expected 64 hexadecimal digits" in short.stderr


# ---------------------------------------------------------------------------------------
# check-data


def _flame_folder(root: Path) -> Path:
    root.mkdir()
    (root / "generic_model.pkl").write_bytes(b"\x80\x02}q\x00.")  # a (tiny) pickle
    (root / "landmark_embedding.npy").write_bytes(b"\x80\x02}q\x00.")
    return root


def test_check_data_accepts_a_flame_folder_and_verifies_checksums(tmp_path: Path) -> None:
    root = _flame_folder(tmp_path / "FLAME 2020")
    report = check_data("flame", root)
    assert report["checked_by"] == "names and formats"
    digest = hashlib.sha256(b"\x80\x02}q\x00.").hexdigest()
    report = check_data("flame", root, {"generic_model.pkl": digest})
    assert report["sha256"] == {"generic_model.pkl": digest}
    with pytest.raises(ValueError, match=r"generic_model.pkl has sha256 .*, expected 0{64} "
                                         r".*flame.is.tue.mpg.de"):
        check_data("flame", root, {"generic_model.pkl": "0" * 64})


@pytest.mark.parametrize(("kind", "site", "key"), [
    ("flame", "https://flame.is.tue.mpg.de", "assets.flame"),
    ("emoca", "https://emoca.is.tue.mpg.de", "models.<name>.path"),
    ("affectnet", "mohammadmahoor.com/affectnet", "affectnet.root"),
    ("now", "https://now.is.tue.mpg.de", "now.root"),
])
def test_check_data_says_what_to_get_where_and_where_to_put_it(
    tmp_path: Path, kind: str, site: str, key: str,
) -> None:
    missing = tmp_path / "nowhere"
    proc = subprocess.run([sys.executable, "-m", "emoca_pipeline", "check-data", kind,
                           str(missing)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"emoca: error: {missing}: no such folder; ")
    assert site in lines[0] and f"put it in {missing}" in lines[0] and key in lines[0]


def test_check_data_names_the_missing_file_and_bad_formats(tmp_path: Path) -> None:
    root = tmp_path / "affectnet"
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    (root / "Manually_Annotated_Images").mkdir()
    header = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
              "expression,valence,arousal\n")
    (lists / "training.csv").write_text(header)
    with pytest.raises(FileNotFoundError, match="missing Manually_Annotated_file_lists/"
                                                "validation.csv; AffectNet is licensed"):
        check_data("affectnet", root)
    (lists / "validation.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="validation.csv lacks the column"):
        check_data("affectnet", root)
    (lists / "validation.csv").write_text(header)
    assert check_data("affectnet", root)["kind"] == "affectnet"

    model = tmp_path / "EMOCA_v2_lr_mse_20"
    (model / "detail" / "checkpoints" / "deca-epoch=10-val_loss").mkdir(parents=True)
    (model / "cfg.yaml").write_text("coarse: {}\ndetail: {}\n")
    with pytest.raises(FileNotFoundError, match=r"missing detail/checkpoints/\*\*/\*.ckpt"):
        check_data("emoca", model)
    (model / "detail" / "checkpoints" / "deca-epoch=10-val_loss" / "x=0.1.ckpt").write_bytes(b"")
    assert check_data("emoca", model)["found"][1].endswith("x=0.1.ckpt")

    flame = _flame_folder(tmp_path / "flame")
    (flame / "generic_model.pkl").write_text("<html>login page</html>")
    with pytest.raises(ValueError, match="generic_model.pkl is not a pickle"):
        check_data("flame", flame)
