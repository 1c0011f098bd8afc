"""Dataset format: round trip, every bad-input case as a DataError before training, the per-rank
sampler's partition and determinism, and extraction from the synthetic world."""

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from controlfoley.data.dataset import ShardDataset, ShardedSampler, collate, require_features
from controlfoley.data.shards import INDEX_FILE, ShardIndex, ShardWriter
from controlfoley.errors import DataError


def write_clips(root: Path, n: int = 10, shard_size: int = 4, grid: tuple[int, int] = (5, 8), seed: int = 0) -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    clips: dict[str, list[torch.Tensor]] = {"tokens": [], "sync": [], "clap": []}
    with ShardWriter(root, shard_size=shard_size, info={"grid": list(grid), "codebook_size": 64}) as w:
        for i in range(n):
            c = {"tokens": torch.randint(0, 64, grid, generator=g), "sync": torch.randn(12, 6, generator=g), "clap": torch.randn(4, generator=g)}
            w.add(f"clip-{i}", c)
            for k, v in c.items():
                clips[k].append(v)
    return clips


def fail_on_call(monkeypatch: pytest.MonkeyPatch, method: str, n: int, exc: BaseException) -> Callable[[], None]:
    """Make `Extraction.<method>` raise `exc` on its n-th call (a crash or a Ctrl-C in the middle
    of an extraction); returns what puts the real method back."""
    from controlfoley.data import extract

    real = getattr(extract.Extraction, method)
    calls: list[int] = []

    def failing(self: Any, *args: Any) -> Any:
        calls.append(1)
        if len(calls) == n:
            raise exc
        return real(self, *args)

    monkeypatch.setattr(extract.Extraction, method, failing)
    return lambda: monkeypatch.setattr(extract.Extraction, method, real)


def test_round_trip(tmp_path: Path) -> None:
    clips = write_clips(tmp_path, n=10, shard_size=4)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["n_clips"] == 10 and [s["n_clips"] for s in index["shards"]] == [4, 4, 2]
    assert index["features"]["tokens"] == {"dtype": "int16", "shape": [5, 8]}
    assert index["features"]["sync"]["dtype"] == "float16" and index["features"]["clap"]["dtype"] == "float32"
    ds = ShardDataset(tmp_path, verify="sha256")
    assert len(ds) == 10 and ds.info["grid"] == [5, 8]
    for i in (0, 3, 4, 9):
        item = ds[i]
        assert torch.equal(item["tokens"].long(), clips["tokens"][i])
        assert torch.equal(item["sync"], clips["sync"][i].half())
        assert torch.equal(item["clap"], clips["clap"][i])
        assert ds.clip_id(i) == f"clip-{i}"
    batch = collate([ds[1], ds[2]])
    assert batch["sync"].shape == (2, 12, 6)
    view = ds.subset([9, 0]).with_keys(["tokens"])
    assert len(view) == 2 and set(view[0]) == {"tokens"} and torch.equal(view[0]["tokens"].long(), clips["tokens"][9])
    with pytest.raises(IndexError):
        ds[10]


def test_dataset_pickles_for_workers(tmp_path: Path) -> None:
    import pickle

    write_clips(tmp_path, n=5)
    ds = ShardDataset(tmp_path)
    ds[0]  # opens a memory-mapped handle, which must not travel to worker processes
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[4]["tokens"], ds[4]["tokens"])


def test_missing_shard(tmp_path: Path) -> None:
    write_clips(tmp_path, n=10)
    (tmp_path / "shard-00001.safetensors").unlink()
    with pytest.raises(DataError, match="shard-00001.*missing"):
        ShardDataset(tmp_path)


def test_truncated_shard(tmp_path: Path) -> None:
    write_clips(tmp_path, n=10)
    p = tmp_path / "shard-00000.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        ShardDataset(tmp_path)


def test_corrupt_header(tmp_path: Path) -> None:
    write_clips(tmp_path, n=10)
    p = tmp_path / "shard-00002.safetensors"
    data = bytearray(p.read_bytes())
    data[8:24] = b"\x00" * 16  # inside the JSON header, same size
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match="shard-00002.*corrupt"):
        ShardDataset(tmp_path)


def test_corrupt_payload_needs_sha256(tmp_path: Path) -> None:
    write_clips(tmp_path, n=10)
    p = tmp_path / "shard-00001.safetensors"
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF  # a tensor byte: the header still parses
    p.write_bytes(bytes(data))
    ShardDataset(tmp_path, verify="header")
    with pytest.raises(DataError, match="sha256"):
        ShardDataset(tmp_path, verify="sha256")


def test_shard_disagreeing_with_index(tmp_path: Path) -> None:
    write_clips(tmp_path / "a", n=8, grid=(5, 8))
    write_clips(tmp_path / "b", n=8, grid=(5, 16))
    # a shard of another dataset with the index's byte size would still have other shapes
    index = json.loads((tmp_path / "a" / INDEX_FILE).read_text())
    other = tmp_path / "b" / "shard-00000.safetensors"
    (tmp_path / "a" / "shard-00000.safetensors").write_bytes(other.read_bytes())
    index["shards"][0]["bytes"] = other.stat().st_size
    (tmp_path / "a" / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(DataError, match="tokens"):
        ShardDataset(tmp_path / "a")


def test_empty_and_unfinished(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no clips"):
        with ShardWriter(tmp_path / "empty"):
            pass
    with pytest.raises(DataError, match="extraction did not finish"):
        ShardDataset(tmp_path / "empty")
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / INDEX_FILE).write_text(json.dumps({"format": "controlfoley.shards", "version": 1, "n_clips": 0, "features": {}, "shards": []}))
    with pytest.raises(DataError, match="no clips"):
        ShardDataset(tmp_path / "zero")
    with pytest.raises(DataError, match="not found"):
        ShardDataset(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / INDEX_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not a valid dataset index"):
        ShardDataset(tmp_path / "bad")


def test_writer_refuses_bad_clips(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path / "w", shard_size=4)
    w.add("a", {"tokens": torch.zeros(5, 8, dtype=torch.long), "sync": torch.zeros(3, 2)})
    with pytest.raises(DataError, match="shape"):
        w.add("b", {"tokens": torch.zeros(5, 9, dtype=torch.long), "sync": torch.zeros(3, 2)})
    with pytest.raises(DataError, match="features"):
        w.add("c", {"tokens": torch.zeros(5, 8, dtype=torch.long)})
    with pytest.raises(DataError, match="NaN/inf"):
        w.add("d", {"tokens": torch.zeros(5, 8, dtype=torch.long), "sync": torch.full((3, 2), 1e6)})  # overflows fp16
    w.close()
    with pytest.raises(DataError, match="already holds a dataset"):
        ShardWriter(tmp_path / "w")
    assert len(ShardDataset(tmp_path / "w")) == 1


def test_require_features_names_both_shapes(tmp_path: Path) -> None:
    write_clips(tmp_path, n=4, grid=(5, 8))
    ds = ShardDataset(tmp_path)
    require_features(ds, {"tokens": (5, 8), "clap": (4,), "mel": None}, optional=("mel",))
    with pytest.raises(DataError, match=r"\[5, 8\].*\[5, 53\]"):
        require_features(ds, {"tokens": (5, 53)})
    with pytest.raises(DataError, match="no feature 'mel'"):
        require_features(ds, {"mel": None})


def test_index_load_reports_format_version(tmp_path: Path) -> None:
    write_clips(tmp_path, n=4)
    d = json.loads((tmp_path / INDEX_FILE).read_text())
    d["version"] = 99
    (tmp_path / INDEX_FILE).write_text(json.dumps(d))
    with pytest.raises(DataError, match="version 99"):
        ShardIndex.load(tmp_path)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(8, 60),
    per_rank=st.integers(1, 3),
    world=st.sampled_from([1, 2, 4]),
    accum=st.sampled_from([1, 2]),
    seed=st.integers(0, 5),
    step=st.integers(0, 30),
)
def test_sampler_ranks_partition_the_global_batch(n: int, per_rank: int, world: int, accum: int, seed: int, step: int) -> None:
    batch = per_rank * world * accum
    assume(batch <= n)
    single = ShardedSampler(n, batch, seed=seed)
    ranks = [ShardedSampler(n, batch, world_size=world, rank=r, micro_batches=accum, seed=seed) for r in range(world)]
    want = single.global_batch_indices(step)
    assert len(set(want)) == batch
    got = {}
    for r, s in enumerate(ranks):
        for m, idx in enumerate(s.micro_batch_indices(step)):
            for row, i in zip(s.rows(m), idx):
                got[row] = i
    assert [got[j] for j in range(batch)] == want  # each rank takes exactly its rows of the same batch


def test_sampler_epochs_and_errors() -> None:
    s = ShardedSampler(10, 4, seed=3, stop_step=4)
    assert s.steps_per_epoch == 2
    e0 = s.global_batch_indices(0) + s.global_batch_indices(1)
    assert len(set(e0)) == 8
    assert s.global_batch_indices(2) != s.global_batch_indices(0)  # a new permutation each epoch
    assert ShardedSampler(10, 4, seed=3).global_batch_indices(2) == s.global_batch_indices(2)
    assert list(s) == [s.global_batch_indices(k) for k in range(4)] and len(s) == 4
    assert ShardedSampler(10, 4, shuffle=False).global_batch_indices(1) == [4, 5, 6, 7]
    with pytest.raises(DataError, match="fewer than one global batch"):
        ShardedSampler(3, 4)
    with pytest.raises(DataError, match="divisible"):
        ShardedSampler(10, 6, world_size=4)


def test_extract_synthetic_cli(tmp_path: Path) -> None:
    from controlfoley.data.extract import extract_main

    out = tmp_path / "syn"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = extract_main(
            ["--preset", "specmaskfoley_tiny", "--out", str(out), "--synthetic", "3", "--extractors", "synthetic_sync,synthetic_clip",
             "--clap", "synthetic_clap", "--mel", "--shard-size", "2", "--batch-size", "2"]
        )  # fmt: skip
    assert rc == 0
    # --mel without --tokenizer is README step 1 (mels for the tokenizer recipe): no warning there;
    # the same extraction without --mel warns (test_extract_resumes_after_a_crash and others)
    assert not [w for w in caught if "untrained tokenizer" in str(w.message)]
    ds = ShardDataset(out, verify="sha256")
    assert len(ds) == 3 and len(ds.index.shards) == 2
    shapes = {k: tuple(v.shape) for k, v in ds.index.features.items()}
    # 5.944 s window: 512 mel frames -> 5 x 32 tokens; 142 frames at 24 fps, 47 at 8 fps
    assert shapes == {"tokens": (5, 32), "mel": (80, 512), "sync": (142, 128), "clip": (47, 64), "clap": (64,)}
    assert ds.info["grid"] == [5, 32] and ds.info["features"]["sync"]["extractor"] == "synthetic_sync"
    assert ds.clip_id(2) == "synthetic-0-2"
    assert int(ds[0]["tokens"].max()) < ds.info["codebook_size"]


def test_extract_refuses_existing_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controlfoley.data.extract import extract_main

    write_clips(tmp_path, n=2)
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        rc = extract_main(["--preset", "specmaskgit_tiny", "--out", str(tmp_path), "--files", str(tmp_path / INDEX_FILE)])  # (an input that exists)
    assert rc == 2 and "already holds a dataset" in capsys.readouterr().err


def test_interrupted_extraction_resumes_to_the_same_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A crash after two full shards keeps them; --resume skips their clips unread and finishes
    with the dataset an uninterrupted run writes."""
    from controlfoley.data import extract
    from controlfoley.data.extract import extract_main

    args = ["--preset", "specmaskfoley_tiny", "--synthetic", "7", "--extractors", "synthetic_sync", "--shard-size", "2", "--batch-size", "1"]
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main([*args, "--out", str(tmp_path / "whole")]) == 0
    real = extract.Extraction.video_features
    fail_on_call(monkeypatch, "video_features", 5, RuntimeError("simulated crash"))
    out = tmp_path / "cut"
    with pytest.warns(UserWarning, match="untrained tokenizer"), pytest.raises(RuntimeError, match="simulated crash"):
        extract_main([*args, "--out", str(out)])
    assert not (out / INDEX_FILE).exists() and (out / "progress.json").exists()
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main([*args, "--out", str(out)]) == 2  # neither --resume nor --overwrite
    assert "interrupted extraction" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main([*args, "--out", str(out), "--world-seed", "1", "--resume"]) == 2  # other settings
    assert "other settings" in capsys.readouterr().err
    loads: list[int] = []
    monkeypatch.setattr(extract.Extraction, "video_features", lambda self, f: (loads.append(1), real(self, f))[1])
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main([*args, "--out", str(out), "--resume"]) == 0
    assert len(loads) == 3  # clips 0-3 were in the two finished shards
    assert not (out / "progress.json").exists()
    a, b = ShardDataset(tmp_path / "whole", verify="sha256"), ShardDataset(out, verify="sha256")
    assert [a.clip_id(i) for i in range(7)] == [b.clip_id(i) for i in range(7)]
    for i in range(7):
        assert [k for k in a.keys if not torch.equal(a[i][k], b[i][k])] == []


def test_extract_skip_bad_leaves_out_unreadable_files_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --skip-bad the first unreadable file stops the extraction; with it, the file is
    listed in skipped.tsv, and a resumed run aligns its clip ids past the skipped file."""
    import soundfile as sf

    from controlfoley.data.extract import SKIPPED_FILE, extract_main

    sr = 22050
    files = []
    for name in ("a", "bad", "b", "c"):
        f = tmp_path / f"{name}.wav"
        if name == "bad":
            f.write_bytes(b"RIFF not really a wave file")
        else:
            sf.write(f, 0.1 * torch.randn(sr).numpy(), sr)
        files.append(str(f))
    args = ["--preset", "specmaskgit_tiny", "--files", *files, "--shard-size", "1", "--batch-size", "1"]
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main([*args, "--out", str(tmp_path / "strict")]) == 2
    assert "bad.wav" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="skipped 1 clip"):
        assert extract_main([*args, "--out", str(tmp_path / "whole"), "--skip-bad"]) == 0
    whole = ShardDataset(tmp_path / "whole")
    assert [Path(whole.clip_id(i)).name for i in range(len(whole))] == ["a.wav", "b.wav", "c.wav"]
    assert [line.split("\t")[0] for line in (tmp_path / "whole" / SKIPPED_FILE).read_text().splitlines()] == [files[1]]

    restore = fail_on_call(monkeypatch, "audio_features", 3, RuntimeError("simulated crash"))
    out = tmp_path / "cut"
    with pytest.warns(UserWarning, match="untrained tokenizer"), pytest.raises(RuntimeError, match="simulated crash"):
        extract_main([*args, "--out", str(out), "--skip-bad"])
    restore()
    with pytest.warns(UserWarning, match="skipped 1 clip"):
        assert extract_main([*args, "--out", str(out), "--skip-bad", "--resume"]) == 0
    cut = ShardDataset(out)
    assert [cut.clip_id(i) for i in range(len(cut))] == [whole.clip_id(i) for i in range(len(whole))]
    assert (out / SKIPPED_FILE).read_text() == (tmp_path / "whole" / SKIPPED_FILE).read_text()
    for i in range(len(cut)):
        assert torch.equal(cut[i]["tokens"], whole[i]["tokens"])


def test_extract_takes_extractor_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--extractor NAME,ARG=VALUE builds an extractor with arguments (the real ones need weights or
    a features folder); a missing required argument is named."""
    from controlfoley.data.extract import extract_main

    base = ["--preset", "specmaskfoley_tiny", "--synthetic", "2", "--extractor", "synthetic_sync"]
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main(
            [*base, "--extractor", "synthetic_clip,dim=32", "--clap", "synthetic_clap,dim=8", "--out", str(tmp_path / "d"),
             "--model", 'control_encoder={"clip_dim": 32}', "--model", 'backbone={"cond_dim": 8}']
        ) == 0  # fmt: skip
    shapes = {k: tuple(v.shape) for k, v in ShardIndex.load(tmp_path / "d").features.items()}
    assert shapes["clip"] == (47, 32) and shapes["clap"] == (8,) and shapes["sync"] == (142, 128)
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main([*base, "--extractor", "clip_openclip", "--out", str(tmp_path / "e")]) == 2
    assert "missing required argument(s) ['weights']" in capsys.readouterr().err


def test_extract_reads_precomputed_features_for_video_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A precomputed extractor (features_for(path)) is read per video file, cut or extended to the
    clip's frames; the README's real-data extraction used to die calling it on frames."""
    import numpy as np

    from controlfoley.data.extract import extract_main
    from controlfoley.data.synthetic import SyntheticWorld
    from controlfoley.video import mux_audio, write_video

    world = SyntheticWorld(seed=0, duration_s=2.0)
    clip = world.clip(0)
    silent = write_video(tmp_path / "silent.mp4", clip.frames, clip.fps)
    video = mux_audio(silent, clip.audio, clip.sample_rate, tmp_path / "v0.mp4").path
    (tmp_path / "feats").mkdir()
    rows = np.random.default_rng(0).standard_normal((100, 128)).astype(np.float32)
    np.save(tmp_path / "feats" / "v0.npy", rows)
    args = ["--preset", "specmaskfoley_tiny", "--extractor", f"synchformer_precomputed,root={tmp_path / 'feats'},dim=128"]
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main([*args, "--files", str(video), "--out", str(tmp_path / "d")]) == 0
    sync = ShardDataset(tmp_path / "d")[0]["sync"].float()
    assert sync.shape == (142, 128)  # 5.94 s at 24 fps: 100 rows, then the last one held
    assert torch.allclose(sync[:100], torch.from_numpy(rows).half().float())
    assert torch.equal(sync[100:], sync[99:100].expand(42, -1))
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main([*args, "--synthetic", "1", "--out", str(tmp_path / "e")]) == 2
    assert "cannot serve rendered clips" in capsys.readouterr().err


def test_a_tagged_list_without_clap_stores_no_tags(tmp_path: Path) -> None:
    """README's step 1 extracts mels from the tagged list with no --clap: the tags are left out
    with a warning (it was an error); with --clap they become the clips' `clap` vectors."""
    import soundfile as sf

    from controlfoley.data.extract import extract_main

    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", 0.1 * torch.randn(22050).numpy(), 22050)
    listing = tmp_path / "clips.tsv"
    listing.write_text(f"{tmp_path / 'a.wav'}\tbell, thud\n{tmp_path / 'b.wav'}\tsnare\n", encoding="utf-8")
    base = ["--preset", "specmaskgit_tiny", "--list", str(listing), "--mel"]
    with pytest.warns(UserWarning, match="tags are not stored"):
        assert extract_main([*base, "--out", str(tmp_path / "mel")]) == 0
    assert "clap" not in ShardIndex.load(tmp_path / "mel").features
    assert extract_main([*base, "--clap", "synthetic_clap", "--out", str(tmp_path / "tagged")]) == 0
    ds = ShardDataset(tmp_path / "tagged")
    assert ds.index.features["clap"].shape == (64,) and not torch.equal(ds[0]["clap"], ds[1]["clap"])


def test_skip_bad_resume_reads_again_what_came_after_the_last_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file skipped after the last finished shard is read again on resume: repaired meanwhile,
    it is extracted and no longer listed as skipped."""
    import soundfile as sf

    from controlfoley.data.extract import SKIPPED_FILE, extract_main

    files = [tmp_path / f"{n}.wav" for n in ("a", "b", "bad", "c")]
    for f in files:
        if f.stem == "bad":
            f.write_bytes(b"RIFF not really a wave file")
        else:
            sf.write(f, 0.1 * torch.randn(22050).numpy(), 22050)
    args = ["--preset", "specmaskgit_tiny", "--files", *map(str, files), "--shard-size", "1", "--batch-size", "1", "--skip-bad"]
    # the third tokenizer call is c's: after a and b were written and bad was skipped
    restore = fail_on_call(monkeypatch, "audio_features", 3, RuntimeError("simulated crash"))
    out = tmp_path / "cut"
    with pytest.warns(UserWarning, match="untrained tokenizer"), pytest.raises(RuntimeError, match="simulated crash"):
        extract_main([*args, "--out", str(out)])
    assert (out / SKIPPED_FILE).read_text().startswith(str(files[2]))
    restore()
    sf.write(files[2], 0.1 * torch.randn(22050).numpy(), 22050)  # the file is repaired
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main([*args, "--out", str(out), "--resume"]) == 0
    ds = ShardDataset(out)
    assert [Path(ds.clip_id(i)).stem for i in range(len(ds))] == ["a", "b", "bad", "c"]
    assert (out / SKIPPED_FILE).read_text() == ""


def test_extract_records_extractor_arguments_and_checks_widths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Resuming with other extractor arguments (or another clip count) is refused: the dataset would
    mix features; a width the preset cannot take fails before any clip; Ctrl-C says how to resume."""
    from controlfoley.data.extract import extract_main

    out = tmp_path / "d"
    args = ["--preset", "specmaskfoley_tiny", "--shard-size", "1", "--batch-size", "1", "--out", str(out)]
    restore = fail_on_call(monkeypatch, "audio_features", 2, KeyboardInterrupt())
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main([*args, "--synthetic", "3", "--extractor", "synthetic_sync"]) == 130
    assert "--resume" in capsys.readouterr().err
    restore()
    for changed in (["--synthetic", "2", "--extractor", "synthetic_sync"], ["--synthetic", "3", "--extractor", "synthetic_sync,seed=5"]):
        with pytest.warns(UserWarning, match="untrained tokenizer"):
            assert extract_main([*args, *changed, "--resume"]) == 2
        assert "other settings" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main([*args, "--synthetic", "3", "--extractor", "synthetic_sync", "--resume"]) == 0
    assert ShardIndex.load(out).info["features"]["sync"]["args"] == {}
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main(["--preset", "specmaskfoley_tiny", "--synthetic", "1", "--extractor", "synthetic_sync,dim=96", "--out", str(tmp_path / "e")]) == 2
    assert "gives 96-wide 'sync' features but preset 'specmaskfoley_tiny' takes 128" in capsys.readouterr().err


def test_list_paths_are_read_from_the_list_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Relative paths in --list are taken from the list file's folder, whatever the current folder;
    a missing file names where it was looked for, and --skip-bad."""
    import soundfile as sf

    from controlfoley.data.extract import extract_main

    media = tmp_path / "media"
    media.mkdir()
    sf.write(media / "a.wav", 0.1 * torch.randn(22050).numpy(), 22050)
    (media / "clips.tsv").write_text("a.wav\n", encoding="utf-8")
    (media / "missing.tsv").write_text("a.wav\nnope.wav\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    base = ["--preset", "specmaskgit_tiny", "--mel"]
    assert extract_main([*base, "--list", "../media/clips.tsv", "--out", "ok"]) == 0
    assert ShardIndex.load(elsewhere / "ok").n_clips == 1
    assert extract_main([*base, "--list", "../media/missing.tsv", "--out", "bad"]) == 2
    err = capsys.readouterr().err
    assert "media/nope.wav" in err and "--skip-bad leaves out files that cannot be read" in err


def test_list_clip_ids_do_not_depend_on_how_the_list_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clip ids are the list's entries as written: an extraction started with a relative --list
    path resumes with an absolute one."""
    import soundfile as sf

    from controlfoley.data import extract

    (tmp_path / "media").mkdir()
    for n in ("a", "b", "c"):
        sf.write(tmp_path / "media" / f"{n}.wav", 0.1 * torch.randn(22050).numpy(), 22050)
    (tmp_path / "media" / "l.tsv").write_text("./a.wav\nb.wav\nc.wav\n", encoding="utf-8")  # ./a.wav: a.wav, as on the command line
    monkeypatch.chdir(tmp_path)
    base = ["--preset", "specmaskgit_tiny", "--mel", "--shard-size", "1", "--out", "ds"]
    real = extract.ShardWriter.add
    calls = []

    def add_then_stop(self, *a, **k):  # a crash after the first clip's shard
        calls.append(a[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(extract.ShardWriter, "add", add_then_stop)
    assert extract.extract_main([*base, "--list", "media/l.tsv"]) == 130
    monkeypatch.setattr(extract.ShardWriter, "add", real)
    assert extract.extract_main([*base, "--list", str(tmp_path / "media" / "l.tsv"), "--resume"]) == 0
    ds = ShardDataset(tmp_path / "ds")
    assert [ds.clip_id(i) for i in range(len(ds))] == ["a.wav", "b.wav", "c.wav"] and calls[0] == "a.wav"


def test_a_file_given_as_the_dataset_is_named(tmp_path: Path) -> None:
    from controlfoley.data.shards import ShardIndex

    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(DataError, match=r"index.json is a file, not a dataset folder .*: pass its folder"):
        ShardIndex.load(tmp_path / "index.json")
    with pytest.raises(DataError, match="dataset folder not found"):
        ShardIndex.load(tmp_path / "missing")


def test_the_same_clips_make_the_same_bytes_and_fingerprint(tmp_path: Path) -> None:
    """Re-extracting identical data gives identical shards (sha256) and dataset fingerprint, so a run
    resumes on it (safetensors wrote several metadata keys in a varying order: 1 in 2 shards differed)."""
    write_clips(tmp_path / "a", n=12, shard_size=1)
    write_clips(tmp_path / "b", n=12, shard_size=1)
    a, b = ShardIndex.load(tmp_path / "a"), ShardIndex.load(tmp_path / "b")
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards] and len(a.shards) == 12
    assert a.fingerprint() == b.fingerprint()
    assert ShardDataset(tmp_path / "a", verify="sha256").clip_id(11) == "clip-11"


def test_values_the_writer_never_stores_are_named_with_the_clip(tmp_path: Path) -> None:
    """Bytes changed on disk after writing (the default header check cannot see them): tokens outside
    the codebook, NaN in a feature. A DataError naming the clip and shard and the way out, not an
    index error (or a NaN loss) inside a training step."""
    import struct

    write_clips(tmp_path, n=4, shard_size=4)
    shard = tmp_path / "shard-00000.safetensors"
    raw = bytearray(shard.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    tokens_at = 8 + n + header["tokens"]["data_offsets"][0]  # int16 [4, 5, 8]: clip 0 first
    sync_at = 8 + n + header["sync"]["data_offsets"][0] + 2 * (12 * 6)  # fp16 [4, 12, 6]: clip 1's first value
    raw[tokens_at : tokens_at + 2] = struct.pack("<h", 500)  # codebook 64
    raw[sync_at : sync_at + 2] = b"\xff\x7f"  # a float16 NaN
    shard.write_bytes(bytes(raw))
    ds = ShardDataset(tmp_path)  # the header check passes
    with pytest.raises(DataError, match=r"clip 'clip-0' \(row 0 of shard .*shard-00000.safetensors\) has tokens outside the codebook \[0, 64\) \(min .*max 500\).*--verify-data sha256.*--resume"):
        ds[0]
    with pytest.raises(DataError, match=r"clip 'clip-1' .* has NaN or inf values in feature 'sync'"):
        ds[1]
    assert torch.isfinite(ds[2]["sync"]).all()
    with pytest.raises(DataError, match="sha256"):
        ShardDataset(tmp_path, verify="sha256")


def test_shard_writer_takes_numpy_arrays(tmp_path: Path) -> None:
    """docs/DATA.md's example invites plain arrays: they were "'ndarray' has no attribute 'detach'"."""
    import inspect

    import numpy as np

    tokens = np.arange(40, dtype=np.int64).reshape(5, 8)
    sync = np.random.default_rng(0).standard_normal((12, 6))[::-1]  # float64, negative strides
    with ShardWriter(tmp_path / "np", shard_size=4) as w:
        w.add("a", {"tokens": tokens, "sync": sync})
        w.add("b", {"tokens": torch.as_tensor(tokens), "sync": torch.as_tensor(sync.copy())})  # tensors and arrays mix
    ds = ShardDataset(tmp_path / "np")
    assert ds.index.features["tokens"].dtype == "int16" and ds.index.features["sync"].dtype == "float16"
    for i in range(2):
        assert torch.equal(ds[i]["tokens"].long(), torch.as_tensor(tokens))
        assert torch.equal(ds[i]["sync"], torch.as_tensor(sync.copy()).half())
    add = inspect.unwrap(ShardWriter.add)
    with ShardWriter(tmp_path / "bad", shard_size=4) as w:
        with pytest.raises(DataError, match=r"clip 'a': feature 'tokens' is list, not a tensor; give torch tensors or numpy arrays of numbers"):
            add(w, "a", {"tokens": [1, 2, 3]})
        with pytest.raises(DataError, match=r"feature 'tags' is ndarray of dtype <U4, not a tensor"):
            add(w, "a", {"tags": np.array(["bell"])})
        w.add("a", {"tokens": tokens})


def _clip(i: int) -> dict[str, torch.Tensor]:
    return {"tokens": torch.full((5, 8), i % 64, dtype=torch.long), "sync": torch.full((3, 2), float(i))}


def test_a_failed_overwrite_keeps_the_old_dataset_and_resume_finishes_the_new_one(tmp_path: Path) -> None:
    """--overwrite used to delete index.json (and progress.json) before reading a clip: any failure
    left a folder that neither loaded nor resumed. The old dataset now loads until the new one's
    index is swapped in; an interrupted replacement resumes, and then the old shards are gone."""
    root = tmp_path / "ds"
    write_clips(root, n=16, shard_size=4)
    old = ShardIndex.load(root)
    w = ShardWriter(root, shard_size=4, overwrite=True)
    for i in range(6):
        w.add(f"new-{i}", _clip(i))  # one new shard finished, then a crash (never closed)
    still = ShardIndex.load(root)
    assert still.fingerprint() == old.fingerprint() and still.n_clips == 16
    still.verify("sha256")
    assert len(ShardDataset(root)) == 16 and ShardDataset(root).clip_id(15) == "clip-15"
    assert w.shards[0].file not in {s.file for s in old.shards}  # the new shards have names of their own
    with pytest.raises(DataError, match="holds a dataset .*still loads.* interrupted extraction replacing it.*--resume"):
        ShardWriter(root, shard_size=4)
    r = ShardWriter(root, shard_size=4, resume=True)
    assert r.clip_ids == [f"new-{i}" for i in range(4)]
    assert ShardIndex.load(root).n_clips == 16  # resuming changes nothing until it completes
    for i in range(4, 8):
        r.add(f"new-{i}", _clip(i))
    index = r.close()
    assert index.n_clips == 8 and ShardIndex.load(root).n_clips == 8
    ds = ShardDataset(root, verify="sha256")
    assert [ds.clip_id(i) for i in range(8)] == [f"new-{i}" for i in range(8)] and int(ds[7]["tokens"][0, 0]) == 7
    assert sorted(p.name for p in root.iterdir()) == sorted([INDEX_FILE, *(s.file for s in index.shards)])  # no old shard, no progress


def test_overwrite_with_fewer_clips_leaves_no_stale_shards(tmp_path: Path) -> None:
    """16 clips then 8 used to leave the first dataset's shard-00002/00003 behind; replacing twice
    goes back to the first names."""
    root = tmp_path / "ds"
    write_clips(root, n=16, shard_size=4)
    for n in (8, 3):
        with ShardWriter(root, shard_size=4, overwrite=True) as w:
            for i in range(n):
                w.add(f"c{i}", _clip(i))
        index = ShardIndex.load(root)
        assert index.n_clips == n
        assert sorted(p.name for p in root.iterdir()) == sorted([INDEX_FILE, *(s.file for s in index.shards)])
    assert [s.file for s in index.shards] == ["shard-00000.safetensors"]


def test_overwrite_discards_an_interrupted_extraction_at_once(tmp_path: Path) -> None:
    """Without a finished dataset, --overwrite starts afresh: the interrupted run's shards and
    progress go, and its names are reused."""
    root = tmp_path / "ds"
    w = ShardWriter(root, shard_size=2)
    for i in range(5):
        w.add(f"a{i}", _clip(i))  # two shards, never closed
    w2 = ShardWriter(root, shard_size=2, overwrite=True)
    assert sorted(p.name for p in root.iterdir()) == []
    w2.add("b0", _clip(0))
    assert [s.file for s in w2.close().shards] == ["shard-00000.safetensors"]


@pytest.mark.parametrize(
    "where, error, expect",
    [
        ("shard", OSError(28, "No space left on device"), r"cannot write .*shard-00001\.safetensors: No space left on device; the disk is full: "
         r"free space, then re-run the same command with --resume\. The 1 finished shard of this extraction is kept"),
        ("shard", "safetensors", r"shard-00001\.safetensors: No space left on device; the disk is full: free space"),
        ("progress", OSError(30, "Read-only file system"), r"cannot write .*progress\.json: Read-only file system; choose a folder you can write"),
        ("index", OSError(28, "No space left on device"), r"cannot write .*index\.json: .*the disk is full: free space, then re-run the same command with --resume"),
    ],
)  # fmt: skip
def test_a_failed_write_names_the_file_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, error: Any, expect: str) -> None:
    """A full disk used to surface as safetensors' own error (no path, no --resume hint); every
    write of the writer now raises DataError naming the file and the fix, and keeps what is done."""
    from safetensors import SafetensorError

    from controlfoley.data import shards

    if error == "safetensors":
        error = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    root = tmp_path / "ds"
    target = {"shard": ("save_file", 2), "progress": ("atomic_write_text", 2), "index": ("atomic_write_text", 3)}[where]
    real = getattr(shards, target[0])
    calls: list[int] = []

    def failing(*a: Any, **k: Any) -> Any:
        calls.append(1)
        if len(calls) == target[1]:
            raise error
        return real(*a, **k)

    monkeypatch.setattr(shards, target[0], failing)
    w = ShardWriter(root, shard_size=2)
    with pytest.raises(DataError, match=expect):
        for i in range(4):
            w.add(f"c{i}", _clip(i))
        w.close()
    monkeypatch.setattr(shards, target[0], real)
    r = ShardWriter(root, shard_size=2, resume=True)
    assert r.clip_ids == ["c0", "c1"] or (where == "index" and len(r.clip_ids) == 4)
    for i in range(len(r.clip_ids), 4):
        r.add(f"c{i}", _clip(i))
    assert r.close().n_clips == 4
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_resume_removes_the_temporary_files_a_killed_writer_left(tmp_path: Path) -> None:
    """A SIGKILL between writing a shard's temporary file and its rename left
    `.shard-00001.tmp-<8 random characters>.safetensors`, which survived a successful --resume."""
    import os
    import time

    root = tmp_path / "ds"
    w = ShardWriter(root, shard_size=2)
    for i in range(3):
        w.add(f"c{i}", _clip(i))
    progress = time.time() - 10  # the last progress write, 10 s ago
    os.utime(root / "progress.json", (progress, progress))
    older = root / ".shard-00000.tmp-abcd_123.safetensors"  # from an earlier kill, before the last progress write
    killed = root / ".shard-00001.tmp-x1y2z3w4.safetensors"  # the kill's own: newer than progress.json
    other = root / ".notes.tmp-abcdefgh.txt"  # not a name the writer gives
    for p, t in ((older, progress - 60), (killed, progress + 1), (other, progress - 60)):
        p.write_bytes(b"partial")
        os.utime(p, (t, t))
    r = ShardWriter(root, shard_size=2, resume=True)
    assert not older.exists() and killed.exists()  # a newer one could be a live writer's: left until close
    for i in range(2, 4):
        r.add(f"c{i}", _clip(i))
    r.close()
    assert not killed.exists() and other.exists()
    assert sorted(p.name for p in root.iterdir()) == sorted([".notes.tmp-abcdefgh.txt", INDEX_FILE, "shard-00000.safetensors", "shard-00001.safetensors"])


def _tokens_dataset(root: Path, clips: dict[str, int], tokenizer: str | None = "runs/tok") -> Path:
    """A dataset of `{clip id: seed}`: clips of one seed have the same tokens (the same audio)."""
    with ShardWriter(root, shard_size=2, info={"tokenizer": tokenizer}) as w:
        for cid, seed in clips.items():
            w.add(cid, {"tokens": torch.randint(0, 64, (5, 8), generator=torch.Generator().manual_seed(seed))})
    return root


def test_val_data_sharing_clips_with_the_training_data_is_named(tmp_path: Path) -> None:
    """--val-data holding training clips (the same video in both lists, or --val-data = --data)
    trained silently, its validation loss measuring memorisation. Shared audio is found by the tokens
    (whatever the clips are called); two different videos that two lists both call `a.mp4` are not
    the same clip; datasets of other tokenizers fall back to the clip ids."""
    from controlfoley.train.datasets import warn_shared_clips

    train = ShardDataset(_tokens_dataset(tmp_path / "train", {"a.mp4": 1, "b.mp4": 2, "c.mp4": 3}))
    val = ShardDataset(_tokens_dataset(tmp_path / "val", {"../train/b.mp4": 2, "a.mp4": 11, "v.mp4": 12}))
    with pytest.warns(UserWarning, match=r"--val-data .*val: 1 of its 3 clips have the same audio \(identical tokens\) as clips of --data, e\.g\. '\.\./train/b\.mp4' = 'b\.mp4'\. .*memorisation") as seen:
        warn_shared_clips(train, val)
    assert len(seen) == 1
    with pytest.warns(UserWarning, match=r"3 of its 3 clips have the same audio"):
        warn_shared_clips(train, train.subset([2, 0, 1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_shared_clips(train, ShardDataset(_tokens_dataset(tmp_path / "new", {"x.mp4": 21, "y.mp4": 22})))  # disjoint: quiet
    other = ShardDataset(_tokens_dataset(tmp_path / "other", {"a.mp4": 31, "z.mp4": 32}, tokenizer="runs/tok2"))
    with pytest.warns(UserWarning, match=r"1 of its 2 clips have the same clip ids \(paths as the lists wrote them\) as clips of --data, e\.g\. 'a\.mp4'\."):
        warn_shared_clips(train, other)


def test_training_with_val_data_that_is_the_training_data_warns(tmp_path: Path) -> None:
    from test_train import config, write_data

    from controlfoley.train import train

    ds = write_data(tmp_path / "ds", n=8)
    with pytest.warns(UserWarning, match=r"--val-data .*: 8 of its 8 clips have the same audio"):
        train(config("backbone", ds, tmp_path / "bb", steps=1, warmup_steps=0, val_data=str(ds)))


def test_token_dtype_comes_from_the_codebook_and_values_the_dtype_cannot_hold_are_refused(tmp_path: Path) -> None:
    """The tokens' dtype was chosen from the first clip's largest code: a quiet first clip made it
    int16, and a later code >= 2**15 wrapped to a negative one without an error."""
    with ShardWriter(tmp_path / "big", shard_size=4, info={"codebook_size": 65536}) as w:
        w.add("quiet", {"tokens": torch.zeros(2, 3, dtype=torch.long)})
        w.add("loud", {"tokens": torch.full((2, 3), 40000)})
    ds = ShardDataset(tmp_path / "big", verify="sha256")
    assert ds.index.features["tokens"].dtype == "int32" and ds[1]["tokens"].flatten().tolist() == [40000] * 6
    with ShardWriter(tmp_path / "edge", info={"codebook_size": 32768}) as w:  # codes 0 .. 32767 fit int16
        w.add("a", {"tokens": torch.full((2,), 32767)})
    assert ShardIndex.load(tmp_path / "edge").features["tokens"].dtype == "int16"
    w = ShardWriter(tmp_path / "small", info={"codebook_size": 64})
    with pytest.raises(DataError, match=r"clip 'x': feature 'tokens' has values outside the codebook \[0, 64\) \(min 0, max 64\)"):
        w.add("x", {"tokens": torch.tensor([0, 64])})
    w = ShardWriter(tmp_path / "nocb", shard_size=4)  # no codebook_size: the first clip decides, later clips are checked
    w.add("quiet", {"tokens": torch.zeros(2, 3, dtype=torch.long)})
    with pytest.raises(DataError, match=r"clip 'loud': feature 'tokens' has values in \[40000, 40000\], outside int16 \[-32768, 32767\].*codebook_size"):
        w.add("loud", {"tokens": torch.full((2, 3), 40000)})
    w.add("next", {"tokens": torch.full((2, 3), 7)})
    assert w.close().n_clips == 2 and ShardDataset(tmp_path / "nocb")[1]["tokens"].flatten().tolist() == [7] * 6
    w = ShardWriter(tmp_path / "u8", dtypes={"label": torch.uint8})
    with pytest.raises(DataError, match=r"feature 'label' has values in \[-1, -1\], outside uint8 \[0, 255\]"):
        w.add("a", {"label": torch.tensor(-1)})


def test_a_retried_close_after_a_failed_index_write_writes_the_new_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() marked itself closed before writing index.json: after a failed write (a full disk) a
    second close() returned the index on disk, the OLD dataset's when replacing one."""
    import errno

    from controlfoley.data import shards

    root = tmp_path / "ds"
    with ShardWriter(root, shard_size=2) as w:
        for i in range(2):
            w.add(f"old{i}", _clip(i))
    w = ShardWriter(root, shard_size=2, overwrite=True)
    for i in range(5):
        w.add(f"new{i}", _clip(i))
    real = shards.atomic_write_text

    def full(path: Any, text: str) -> None:
        if Path(path).name == INDEX_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(shards, "atomic_write_text", full)
    with pytest.raises(DataError, match="No space left on device"):
        w.close()
    assert ShardIndex.load(root).n_clips == 2  # the old dataset still loads
    monkeypatch.setattr(shards, "atomic_write_text", real)  # space freed
    index = w.close()
    assert index.n_clips == 5 and ShardIndex.load(root).fingerprint() == index.fingerprint()
    assert w.close() is index
    assert sorted(p.name for p in root.iterdir()) == sorted([INDEX_FILE, *(s.file for s in index.shards)])


def _metadata_dataset(root: Path) -> Path:
    with ShardWriter(root, shard_size=4) as w:
        for i in range(4):
            w.add(f"c{i}", {"tokens": torch.full((5, 7), i)})
        w.add("d0", {"tokens": torch.full((5, 7), 9)})
    return root


@pytest.mark.parametrize(
    "old, new, expect",
    [
        (b'\\"c2\\"', b'\\"c1\\"', r"lists the clip id 'c1' twice"),
        (b'\\"c1\\", ', b'\\"c1\\"x ', r"clip_ids metadata that is not valid JSON"),
        (b'[\\"c0\\", \\"c1\\", \\"c2\\", \\"c3\\"]', b'{\\"c0\\": \\"c1\\", \\"c2\\": \\"c3\\"}', r"clip_ids metadata that is not a JSON list of strings"),
        (b'[\\"c0\\", \\"c1\\", ', b'[\\"c0\\", 1,      ', r"clip_ids metadata that is not a JSON list of strings"),
        (b'\\"c0\\", \\"c1\\"', b'\\"c0c1\\"      ', r"lists 3 clip ids for its 4 clips"),
        (b'\\"c3\\"', b'\\"d0\\"', r"lists the clip id 'd0', which shard .*shard-00000\.safetensors lists too"),
        (b'"clip_ids"', b'"clip_idz"', r"has no clip_ids metadata"),
    ],
)  # fmt: skip
def test_a_shards_clip_ids_are_checked_with_its_header(tmp_path: Path, old: bytes, new: bytes, expect: str) -> None:
    """verify('header') passed a shard whose clip_ids metadata was corrupt (same size, still valid
    safetensors): a repeated id went on silently, and unparsable ids surfaced later, in clip_ids()
    (train's --val-data check), as a bare JSONDecodeError naming no shard."""
    root = _metadata_dataset(tmp_path / "ds")
    shard = root / "shard-00000.safetensors"
    data = shard.read_bytes()
    assert len(old) == len(new) and data.count(old) == 1
    shard.write_bytes(data.replace(old, new))
    with pytest.raises(DataError, match=rf"shard .*shard-0000[01]\.safetensors.*{expect}.*Re-extract"):
        ShardIndex.load(root).verify("header")
    ds = ShardDataset(root, verify="none")  # read without the check: the same error, not a JSONDecodeError
    with pytest.raises(DataError, match=rf"shard .*shard-0000[01]\.safetensors.*{expect}"):
        ds.clip_ids()
    if "d0" not in expect:  # (an id repeated in another shard: each shard alone is fine)
        with pytest.raises(DataError, match=rf"shard .*shard-00000\.safetensors.*{expect}"):
            ds.clip_id(0)


def test_flipped_header_bytes_are_a_data_error_or_leave_the_ids_readable(tmp_path: Path) -> None:
    """Every single-byte change of a shard's header (the size stays): verify('header') raises a
    DataError, or passes with clip ids that read back as a list of unique ids (a changed character
    of an id is only seen by sha256); nothing else escapes."""
    import struct

    root = _metadata_dataset(tmp_path / "ds")
    shard = root / "shard-00000.safetensors"
    orig = shard.read_bytes()
    n = struct.unpack("<Q", orig[:8])[0]
    escaped = []
    for pos in range(8, 8 + n):
        for val in (0x22, 0x39, 0x5C):
            if orig[pos] == val:
                continue
            changed = bytearray(orig)
            changed[pos] = val
            shard.write_bytes(bytes(changed))
            try:
                ShardIndex.load(root).verify("header")
            except DataError:
                continue
            except Exception as e:  # noqa: BLE001  (the finding: anything but a DataError)
                escaped.append((pos, chr(val), type(e).__name__, str(e)[:80]))
                continue
            try:  # the check passed: the ids read back
                ids = ShardDataset(root, verify="none").clip_ids()
            except Exception as e:  # noqa: BLE001
                escaped.append((pos, chr(val), "after a passing check: " + type(e).__name__, str(e)[:80]))
                continue
            assert len(set(ids)) == len(ids) == 5, (pos, chr(val), ids)
    assert not escaped, escaped[:5]


def test_row_digests_of_every_stored_dtype(tmp_path: Path) -> None:
    """row_digests() called .numpy(), which has no bfloat16 (a dtype ShardWriter stores); it now
    hashes the stored bytes, the same digests as before for the other dtypes (train compares the
    digests of two datasets, so they must not depend on which version computed them)."""
    import hashlib

    feats = {
        "emb": torch.bfloat16, "sync": torch.float16, "clap": torch.float32, "tokens": torch.int16, "big": torch.int32,
        "label": torch.int64, "flag": torch.bool, "u": torch.uint8,
    }  # fmt: skip
    shapes: dict[str, tuple[int, ...]] = {"label": (), "flag": (3,), "u": (2, 2)}
    with ShardWriter(tmp_path, shard_size=2, dtypes=feats) as w:
        for i in range(3):  # clip i: 0+i, 1+i, ... (a bool: whether that is odd)
            clip = {}
            for k in feats:
                shape = shapes.get(k, (4,))
                values = torch.arange(math.prod(shape)).reshape(shape) + i
                clip[k] = values % 2 == 1 if k == "flag" else values
            w.add(f"c{i}", clip)
    ds = ShardDataset(tmp_path)
    for key, dtype in feats.items():
        assert ds.index.features[key].torch_dtype == dtype
        rows = [ds[i][key] for i in range(3)]
        got = ds.row_digests(key)
        assert len(set(got)) == (2 if key == "flag" else 3), key
        if dtype != torch.bfloat16:  # numpy has none: the digests the old code gave for the others
            assert got == [hashlib.sha256(r.numpy().tobytes()).hexdigest() for r in rows], key
        assert ds.subset([2, 0]).row_digests(key) == [got[2], got[0]]


def test_subset_indices_outside_the_view_are_refused(tmp_path: Path) -> None:
    """subset([-1]) silently gave the last clip, subset([n]) a bare IndexError; the constructor's
    `indices` refused both with a DataError."""
    write_clips(tmp_path, n=5)
    ds = ShardDataset(tmp_path)
    for bad in ([-1], [5], [0, 7]):
        with pytest.raises(DataError, match=r"subset indices must lie in \[0, 5\)"):
            ds.subset(bad)
    view = ds.subset([4, 1])
    assert [view.clip_id(i) for i in range(2)] == ["clip-4", "clip-1"] and view.subset([1]).clip_id(0) == "clip-1"
    with pytest.raises(DataError, match=r"subset indices must lie in \[0, 2\)"):
        view.subset([2])


def test_overwrite_discards_the_staged_files_of_an_interrupted_replacement(tmp_path: Path) -> None:
    """A replacement killed after staging skipped.new.tsv left it behind through overwrite=True, and
    the next replacement's close() installed it as its own skipped list."""
    root = tmp_path / "ds"
    with ShardWriter(root, shard_size=1) as w:
        w.add("a", _clip(0))
    w = ShardWriter(root, shard_size=1, overwrite=True)
    w.staged("skipped.tsv").write_text("old-bad.mp4\tcannot decode\n")
    w.add("b", _clip(1))  # one shard finished, then killed (never closed)
    assert (root / "skipped.new.tsv").exists()
    w = ShardWriter(root, shard_size=1, overwrite=True)
    assert sorted(p.name for p in root.iterdir()) == [INDEX_FILE, "shard-00000.safetensors"]
    w.staged("skipped.tsv")  # this build skips nothing
    w.add("c", _clip(2))
    index = w.close()
    assert not (root / "skipped.tsv").exists() and sorted(p.name for p in root.iterdir()) == sorted([INDEX_FILE, *(s.file for s in index.shards)])
