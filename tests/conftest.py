"""Shared fixtures: small models built from the registries, seeded generators; a builder registered
for a block; renames that fail."""

import contextlib
import errno
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

# pytest-xdist: one numba cache per worker. librosa's kernels are numba-compiled with cache=True,
# each into a pair of files written separately, so workers filling one cold cache at once can load
# a mismatched pair (numba/numba#10128, open; librosa/librosa#1998). Likely why the 9 tests that run
# librosa's onset detector failed under 14 workers on the H200 right after librosa was reinstalled
# there (benchmarks/RESULTS.md, run J; they pass serially and under -n 2 here). Set before numba loads.
if os.environ.get("PYTEST_XDIST_WORKER") and "NUMBA_CACHE_DIR" not in os.environ:
    _uid = os.getuid() if hasattr(os, "getuid") else 0
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"controlfoley-numba-{_uid}-{os.environ['PYTEST_XDIST_WORKER']}")

torch.set_num_threads(2)


def cpu_env(**extra: str) -> dict[str, str]:
    """The environment for a training subprocess (torchrun's gloo ranks, the CLI under a signal): this
    one's with the GPUs hidden, so on a machine with CUDA it trains on the CPU as CI does (see
    `_train_on_the_cpu`), plus `extra`."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", **extra}


@pytest.fixture(autouse=True)
def _train_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training in the suite runs on the CPU where CUDA is present too: its assertions are the CPU's
    fp32 numbers (device "auto" would pick cuda:LOCAL_RANK there, and bf16 autocast with it). The
    CUDA paths have their own tests, skipped without a GPU, and benchmarks/gpu_check.sh step 15
    trains, resumes and runs torchrun with --device cuda. A test that asks for a device still gets it."""
    if torch.cuda.is_available():
        from controlfoley.train import distributed

        pick = distributed._pick_device

        @functools.wraps(pick)  # __wrapped__: the library's own, for the tests of it
        def on_the_cpu(pref: str, local_rank: int) -> torch.device:
            return pick("cpu" if pref == "auto" else pref, local_rank)

        monkeypatch.setattr(distributed, "_pick_device", on_the_cpu)


def micro_overrides() -> dict:
    """Overrides that shrink specmaskfoley_tiny further, for fast unit tests (same code path)."""
    return {
        "tokenizer": {"ch": 8, "num_res_blocks": 1, "z_channels": 16, "embed_dim": 16, "n_embed": 64, "norm_groups": 8},
        "backbone": {"dim": 32, "depth": 3, "heads": 2, "ffn_dim": 64, "cond_dim": 16},
        "control_encoder": {"sync_dim": 24, "clip_dim": 12},
        "controlnet": {"n_blocks": 2},
    }


@pytest.fixture
def micro_model():
    torch.manual_seed(0)
    from controlfoley import build_model

    return build_model("specmaskfoley_tiny", **micro_overrides()).eval()


def micro_inputs(model, b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    enc = model.control_encoder
    return {
        "features": {"sync": torch.randn(b, 40, enc.sync_dim, generator=g), "clip": torch.randn(b, 13, enc.clip_dim, generator=g)},
        "text": torch.randn(b, model.backbone.cond_dim, generator=g),
        "codes": torch.randint(0, model.backbone.vocab_size, (b, *model.grid), generator=g),
    }


def micro_token_data(folder: Path, model: Any, n: int = 4) -> Path:
    """A token dataset of `n` random clips for a micro model (`micro_model()`): its grid and codebook,
    sync / clip features and CLAP embeddings at the micro control encoder's widths."""
    from controlfoley.data.shards import ShardWriter

    grid, vocab = model.grid, model.tokenizer.codebook_size
    g = torch.Generator().manual_seed(0)
    with ShardWriter(folder, shard_size=4, info={"grid": list(grid), "codebook_size": vocab}) as w:
        for i in range(n):
            w.add(f"c{i}", {"tokens": torch.randint(0, vocab, grid, generator=g), "sync": torch.randn(12, 24, generator=g),
                            "clip": torch.randn(4, 12, generator=g), "clap": torch.randn(16, generator=g)})  # fmt: skip
    return folder


@contextlib.contextmanager
def registered(registry: Any, name: str, builder: Any) -> Iterator[None]:
    """`builder` registered under `name` for the block, unregistered after."""
    registry.register(name)(builder)
    try:
        yield
    finally:
        registry.unregister(name)


def failing_replace(monkeypatch: pytest.MonkeyPatch, fails: Callable[[Path, Path], bool], *, nth: int | None = None, code: int = errno.ENOSPC) -> None:
    """`os.replace(src, dst)` raises OSError `code` (ENOSPC: a full disk at the last moment, the data
    written, not yet in place) where `fails(src, dst)`: every such rename, or only the `nth`."""
    real, seen = os.replace, []

    def replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        if fails(Path(src), Path(dst)):
            seen.append(dst)
            if nth is None or len(seen) == nth:
                raise OSError(code, os.strerror(code), str(src), str(dst))
        real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
