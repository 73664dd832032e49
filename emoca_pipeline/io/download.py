"""Downloads with resume, retries and a checksum, and checks of gated data placed by hand.

:func:`download` fetches one HTTP(S) URL to ``out``:

* bytes go to ``out.part``; a rerun that finds ``out.part`` asks the server for the rest
  (``Range: bytes=N-``) and appends, or starts again when the server ignores the range;
* a dropped connection, a timeout, a short body or an HTTP 5xx / 408 / 429 is retried up to
  ``retries`` times with exponential backoff, each retry resuming from what arrived;
* other HTTP errors (404, 403, ...) fail at once with one line naming the URL and status;
* the SHA-256 of the whole file is compared with the expected one; only a match is renamed
  (``os.replace``, atomic) onto ``out``. So ``out`` never exists unless its checksum matched.

What is left after a failure: a checksum mismatch or a permanent HTTP error removes
``out.part`` (its bytes are wrong or will never be completed). A transfer that failed after
its retries keeps ``out.part`` only when the server supports ranges (it answered 206 or sent
``Accept-Ranges: bytes``), so that a rerun resumes instead of starting over; otherwise it is
removed. A ``.part`` file is never mistaken for the output: Snakemake and every reader look
at ``out`` only.

:func:`check_data` checks licensed data a user downloaded by hand (FLAME, the released EMOCA
models, AffectNet, NoW) where the config points: expected files and formats, and SHA-256 of
the files the config lists. A failure is one line: what to get, from which official site,
and where to put it (the config key and path).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GATED_DATA",
    "DownloadError",
    "GatedData",
    "check_data",
    "download",
    "file_sha256",
    "parse_sha256",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_USER_AGENT = "emoca-pipeline (python urllib)"
#: HTTP statuses worth retrying: the server may answer differently a moment later.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DownloadError(ValueError):
    """A download that failed for good (one line: the URL and why)."""


def parse_sha256(text: str, what: str = "sha256") -> str:
    """``text`` as a lower-case 64-digit hex SHA-256, or ValueError naming ``what``."""
    value = text.strip().lower()
    if not _SHA256.fullmatch(value):
        raise ValueError(f"{what}: expected 64 hexadecimal digits, got {text!r}")
    return value


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, short body, 5xx)."""


def download(
    url: str,
    out: str | os.PathLike,
    sha256: str,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Fetch ``url`` to ``out`` (resuming ``out.part``), verify its SHA-256, rename into place.

    Args:
        url: an ``http://`` or ``https://`` URL.
        out: the final file; its folder is created. If it exists with the right checksum,
            nothing is fetched.
        sha256: expected hex SHA-256 of the whole file.
        retries: retries after the first attempt for transient failures.
        backoff: seconds before the first retry; doubled for each further one (max 60 s).
        timeout: seconds of silence on the connection before an attempt is abandoned.
        sleep: the pause function (tests pass a fast one).

    Returns:
        ``out`` as a Path.

    Raises:
        DownloadError (a ValueError): bad URL, permanent HTTP error, retries exhausted, or
            checksum mismatch; one line naming the URL (and ``out``).
        ValueError: ``out`` exists with another checksum (it is left alone: it may be the
            user's file).
    """
    expected = parse_sha256(sha256)
    out = Path(out)
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"{url}: only http:// and https:// URLs can be downloaded")
    if out.exists():
        actual = file_sha256(out)
        if actual == expected:
            log.info("%s: present, checksum matches", out)
            return out
        raise ValueError(f"{out}: exists with sha256 {actual}, expected {expected}; "
                         "move it away to download it again")
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    server = _Server()
    attempt = 0
    while True:
        try:
            _fetch(url, part, timeout, server)
            break
        except _Transient as err:
            if attempt >= retries:
                if not server.resumes:
                    part.unlink(missing_ok=True)
                kept = (f"; {part.name} kept ({part.stat().st_size} bytes), a rerun resumes"
                        if part.exists() else "")
                raise DownloadError(f"{url}: failed after {attempt + 1} attempts: {err}{kept}"
                                    ) from None
            delay = min(backoff * 2**attempt, 60.0)
            attempt += 1
            log.warning("%s: %s; retry %d/%d in %.1f s", url, err, attempt, retries, delay)
            sleep(delay)
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
    actual = file_sha256(part)
    if actual != expected:
        part.unlink()
        raise DownloadError(f"{url}: sha256 mismatch for {out}: expected {expected}, got "
                            f"{actual}; the downloaded file was removed")
    os.replace(part, out)
    log.info("%s: downloaded to %s (sha256 ok)", url, out)
    return out


@dataclass
class _Server:
    """What the attempts so far learnt about the server."""

    resumes: bool = False  # answered 206 or advertised Accept-Ranges: bytes


def _fetch(url: str, part: Path, timeout: float, server: _Server) -> None:
    """One attempt: append the missing bytes to ``part``.
    Raises _Transient (retry) or DownloadError (give up)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and have:
            # Nothing after byte `have`: the part may be whole already; the checksum decides.
            # (A wrong part is removed by the caller's checksum check.)
            return
        if err.code in _RETRY_STATUSES:
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise _Transient(f"connection failed: {reason}") from None
    with response:
        if response.headers.get("Accept-Ranges", "").lower() == "bytes":
            server.resumes = True
        if have and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != have:
                raise _Transient(f"server resumed at byte {start}, expected {have}")
            mode, server.resumes = "ab", True
        else:
            if have:
                log.info("%s: server ignored the range request; starting again", url)
            mode, have = "wb", 0
        length = response.headers.get("Content-Length")
        expected_body = int(length) if length and length.isdigit() else None
        received = 0
        try:
            with open(part, mode) as f:
                while block := response.read(_CHUNK):
                    f.write(block)
                    received += len(block)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, http.client.HTTPException) as err:  # TimeoutError is an OSError
            raise _Transient(f"transfer broke after {have + received} bytes: {err}") from None
        if expected_body is not None and received < expected_body:
            raise _Transient(f"transfer ended after {have + received} of "
                             f"{have + expected_body} bytes")


def _content_range_start(value: str) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value.strip())
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------
# Gated data: checked where the user placed it


@dataclass(frozen=True)
class GatedData:
    """Licensed data a user downloads by hand.

    Attributes:
        name: what it is, as the user knows it.
        site: the official site to get it from (registration and licence there).
        config_key: the key of config/config.yaml that points at it.
        required: paths (relative to the folder; ``*`` globs allowed) that must exist.
        what: what to download and unpack, in a few words.
    """

    name: str
    site: str
    config_key: str
    required: tuple[str, ...]
    what: str


#: Every kind ``emoca check-data`` knows.
GATED_DATA: dict[str, GatedData] = {
    "flame": GatedData(
        "the FLAME 2020 head model", "https://flame.is.tue.mpg.de", "assets.flame",
        ("generic_model.pkl", "landmark_embedding.npy"),
        "FLAME 2020 (generic_model.pkl) and DECA's landmark_embedding.npy",
    ),
    "emoca": GatedData(
        "a released EMOCA model", "https://emoca.is.tue.mpg.de", "models.<name>.path",
        ("cfg.yaml", "detail/checkpoints/**/*.ckpt"),
        "the EMOCA model archive (e.g. EMOCA_v2_lr_mse_20), unpacked: cfg.yaml and "
        "detail/checkpoints/",
    ),
    "affectnet": GatedData(
        "AffectNet", "http://mohammadmahoor.com/affectnet", "affectnet.root",
        ("Manually_Annotated_file_lists/training.csv",
         "Manually_Annotated_file_lists/validation.csv", "Manually_Annotated_Images"),
        "Manually_Annotated_file_lists/ (training.csv, validation.csv) and "
        "Manually_Annotated_Images/",
    ),
    "now": GatedData(
        "the NoW benchmark", "https://now.is.tue.mpg.de", "now.root",
        ("iphone_pictures", "scans", "scans_lmks_onlypp", "imagepathsvalidation.txt"),
        "NoW_Dataset/final_release_version: iphone_pictures/, scans/, scans_lmks_onlypp/ "
        "and imagepathsvalidation.txt",
    ),
}


def check_data(
    kind: str, path: str | os.PathLike, sha256: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Check gated data of ``kind`` (a key of :data:`GATED_DATA`) at ``path``.

    Args:
        kind: flame, emoca, affectnet or now.
        path: the folder the config points at.
        sha256: expected checksums by path relative to ``path``; when given these files are
            hashed, else only names and formats are checked.

    Returns:
        A JSON-ready report: kind, path, the files found, the checksums verified.

    Raises:
        FileNotFoundError / ValueError: one line saying what is missing or wrong, what to get,
            from where, and where to put it.
    """
    if kind not in GATED_DATA:
        raise ValueError(f"check-data: unknown kind {kind!r}; expected one of "
                         f"{', '.join(GATED_DATA)}")
    spec = GATED_DATA[kind]
    root = Path(path)

    def fail(problem: str, error: type[Exception] = FileNotFoundError) -> Exception:
        return error(f"{root}: {problem}; {spec.name} is licensed and not downloaded by the "
                     f"pipeline: get {spec.what} from {spec.site}, put it in {root} (or point "
                     f"config key {spec.config_key} at where it is)")

    if not root.is_dir():
        raise fail("no such folder")
    found: list[str] = []
    for pattern in spec.required:
        matches = sorted(root.glob(pattern)) if "*" in pattern else (
            [root / pattern] if (root / pattern).exists() else [])
        if not matches:
            raise fail(f"missing {pattern}")
        found.extend(str(match.relative_to(root)) for match in matches)
    _check_formats(kind, root, fail)
    verified: dict[str, str] = {}
    for relative, hex_digest in sorted((sha256 or {}).items()):
        expected = parse_sha256(hex_digest, f"sha256 of {relative}")
        file = root / relative
        if not file.is_file():
            raise fail(f"missing {relative} (listed with a checksum)")
        actual = file_sha256(file)
        if actual != expected:
            raise fail(f"{relative} has sha256 {actual}, expected {expected} (another release "
                       "or a damaged file)", ValueError)
        verified[relative] = actual
    return {"kind": kind, "path": str(root.resolve()), "found": found, "sha256": verified,
            "checked_by": "sha256" if verified else "names and formats"}


def _check_formats(kind: str, root: Path, fail: Callable[..., Exception]) -> None:
    """Cheap format checks (no unpickling): magic bytes and CSV headers."""
    if kind == "flame":
        with open(root / "generic_model.pkl", "rb") as f:
            head = f.read(2)
        if head[:1] != b"\x80":
            raise fail("generic_model.pkl is not a pickle (wrong file?)", ValueError)
    elif kind == "emoca":
        text = (root / "cfg.yaml").read_text(encoding="utf-8", errors="replace")
        if "coarse" not in text or "detail" not in text:
            raise fail("cfg.yaml has no coarse: and detail: sections (not an EMOCA model "
                       "folder)", ValueError)
    elif kind == "affectnet":
        from emoca_pipeline.data.affectnet import AFFECTNET_COLUMNS, csv_header

        lists = root / "Manually_Annotated_file_lists"
        for name in ("training.csv", "validation.csv"):
            try:
                header = csv_header(lists / name)
            except ValueError as err:
                raise fail(str(err), ValueError) from None
            missing = [column for column in AFFECTNET_COLUMNS if column not in header]
            if missing:
                raise fail(f"Manually_Annotated_file_lists/{name} lacks the column(s) "
                           f"{', '.join(missing)}", ValueError)
