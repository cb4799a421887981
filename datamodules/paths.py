"""Where the data lives, and how a missing or corrupt file is reported.

The data directory is resolved in one place so that the fetch script, the datamodules and
the error messages agree: explicit argument > $ARDROP_DATA_DIR > `<repo>/data`.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "ARDROP_DATA_DIR"


class DataError(ValueError):
    """A data file is missing or does not match its checksum/format."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(ENV_VAR) or (REPO_ROOT / "data")
    return Path(data_dir).expanduser().resolve()


def fetch_command(dataset: str, data_dir: Path) -> str:
    return f"python -m datamodules.fetch {dataset} --data-dir {data_dir}"


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def require_file(path: Path, dataset: str, data_dir: Path, expected_md5: str | None) -> Path:
    """Fail early, naming the file and the command that provides it."""
    if not data_dir.is_dir():
        raise DataError(
            f"data directory {data_dir} does not exist (needed for {dataset}); "
            f"create it with: {fetch_command(dataset, data_dir)} "
            f"(or set data_dir=... / ${ENV_VAR})"
        )
    if not path.is_file():
        raise DataError(
            f"{dataset} file {path} is missing; fetch it with: {fetch_command(dataset, data_dir)}"
        )
    if expected_md5 is not None:
        got = md5(path)
        if got != expected_md5:
            raise DataError(
                f"{dataset} file {path} is corrupt (md5 {got}, expected {expected_md5}); "
                f"delete it and re-fetch with: {fetch_command(dataset, data_dir)}"
            )
    return path
