"""Shared fixtures for the framework tests: small synthetic datasets and config helpers.

End-to-end tests never need the network: MNIST-format IDX files and PTB-format text are
written into a tmp dir, and the datamodules read them through `data_dir` with checksum
verification off (the format checks stay on).
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.tobytes())


def make_mnist(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """Learnable fake digits: class c lights up a class-specific band of pixels, plus noise."""
    rng = np.random.default_rng(seed)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c + 4 : 2 * c + 7, 4:24] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def make_ptb(root: Path, n_train: int = 400, n_eval: int = 60, vocab: int = 40, seed: int = 0) -> Path:
    """Sentences from a small word list; valid/test use only words seen in train."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab - 2)] + ["<unk>", "N"]
    folder = root / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
        lines = []
        for j in range(n):
            k = int(rng.integers(3, 12))
            # every word appears in train: the first sentences walk through the list
            sent = words[(j * 7) % vocab :][:k] if split == "train" and j < vocab else list(rng.choice(words, k))
            lines.append(" " + " ".join(sent) + " ")
        (folder / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_mnist(root)
    make_ptb(root)
    return root


@pytest.fixture(scope="session")
def emulated_ext(tmp_path_factory):
    """cuda_ext's binding compiled against the host emulator of its kernels (no GPU needed), built once per session.

    Why the shared cache directory first: the build takes minutes; a later session reuses it
    while the sources' hash is unchanged.
    """
    from cuda_ext import loader
    from cuda_ext.emulation import build_emulated

    try:
        build_dir = loader.cache_root() / f"emulated-{loader.source_hash()}"
        build_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        build_dir = tmp_path_factory.mktemp("ardrop_emulated")
    return build_emulated(build_dir)


def small_overrides(data_dir: Path, out: Path, model: str = "mlp_1024x64", dropout: str = "row") -> list[str]:
    """Tiny, fast settings for an end-to-end run of one model family."""
    ov = [
        f"model={model}", f"dropout={dropout}", f"data_dir={data_dir}", "data.verify=false",
        f"output_dir={out}", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false",
    ]
    if model.startswith("mlp"):
        ov += ["data.batch_size=64", "data.val_size=100", "data.eval_batch_size=100"]
    else:
        ov += ["model.hidden_size=24", "data.batch_size=4", "data.eval_batch_size=4", "data.seq_len=8",
               "trainer.max_epochs=1"]
    return ov


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=overrides)


def run_cli(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m ardrop.train ...` in a subprocess, as a user would call it."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ardrop.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


class PatternProbe:
    """Records what every structured site actually held at each step, and the final weights.

    Written to `<path>/rank<r>.pt` at fit end; used by the resume and DDP tests. Built by
    Hydra from `+callbacks.probe._target_=conftest.PatternProbe`.
    """

    def __new__(cls, path: str):
        import pytorch_lightning as pl

        from ardrop.planning import structured_sites

        class _Probe(pl.Callback):
            def __init__(self):
                self.path = Path(path)
                self.steps: list[tuple[int, tuple]] = []
                self.batches: list[tuple[int, float, float]] = []  # (step, input sum, target sum): the data order

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                pats = tuple((n, m.pattern.dp, m.pattern.offset) for n, m in structured_sites(pl_module))
                self.steps.append((trainer.global_step, pats))
                self.batches.append((trainer.global_step, float(batch[0].double().sum()), float(batch[1].double().sum())))

            def on_fit_end(self, trainer, pl_module):
                self.path.mkdir(parents=True, exist_ok=True)
                weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
                torch.save({"steps": self.steps, "batches": self.batches, "weights": weights},
                           self.path / f"rank{trainer.global_rank}.pt")

        return _Probe()


@pytest.fixture(params=["native", "torch"])
def native_mode(request, monkeypatch):
    """Run a test with ardrop's fused CPU kernels (the default) and with the plain torch path."""
    monkeypatch.setenv("ARDROP_NATIVE", "auto" if request.param == "native" else "0")
    return request.param
