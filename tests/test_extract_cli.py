"""`controlfoley extract` on user mistakes: each is refused before any clip is read (or, where it is
a bad input, skipped with --skip-bad) with a message naming the file, its list line and the fix."""

import json
import math
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import numpy as np
import torch

from controlfoley.data.dataset import ShardDataset
from controlfoley.data.shards import ShardIndex, ShardWriter
from controlfoley.errors import ConfigError, DataError


def _wav(path: Path) -> Path:
    import soundfile as sf

    sf.write(path, 0.1 * torch.randn(22050, generator=torch.Generator().manual_seed(0)).numpy(), 22050)
    return path


def _video_with_audio(path: Path) -> Path:
    from controlfoley.data.synthetic import SyntheticWorld, write_clip_mp4

    return write_clip_mp4(SyntheticWorld(seed=0, duration_s=1.0).clip(0), path)


def _no_media_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any read of audio or video fails the test: the checks must come first."""
    import controlfoley.audio.io
    import controlfoley.video

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("media was read before the inputs were checked")

    for mod, name in ((controlfoley.audio.io, "load_audio"), (controlfoley.video, "read_audio_track"), (controlfoley.video, "read_frames")):
        monkeypatch.setattr(mod, name, refuse)


def test_audio_files_with_video_extractors_are_refused_up_front_or_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A list mixing audio files and videos with --extractors used to die at the first video with
    'clip has features [...], earlier clips have [...]', --skip-bad or not."""
    from controlfoley.data.extract import SKIPPED_FILE, extract_main

    _wav(tmp_path / "a.wav")
    _video_with_audio(tmp_path / "withaudio.mp4")
    (tmp_path / "clips.tsv").write_text("# media\na.wav\tbell\nwithaudio.mp4\tthud\n", encoding="utf-8")
    base = ["--preset", "specmaskfoley_tiny", "--list", str(tmp_path / "clips.tsv"), "--extractors", "synthetic_sync,synthetic_clip"]
    base += ["--clap", "synthetic_clap", "--shard-size", "1", "--batch-size", "1"]
    with monkeypatch.context() as m:
        _no_media_reads(m)
        with pytest.warns(UserWarning, match="untrained tokenizer"):
            assert extract_main([*base, "--out", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err
    assert "'a.wav' (" in err and "clips.tsv:2" in err and "--skip-bad" in err and "without --extractors" in err
    assert not (tmp_path / "strict").exists()  # refused before anything was written

    with pytest.warns(UserWarning, match="skipped 1 clip"):
        assert extract_main([*base, "--out", str(tmp_path / "d"), "--skip-bad"]) == 0
    ds = ShardDataset(tmp_path / "d")
    assert [ds.clip_id(i) for i in range(len(ds))] == ["withaudio.mp4"] and {"sync", "clip", "clap"} <= set(ds.keys)
    skipped = (tmp_path / "d" / SKIPPED_FILE).read_text().splitlines()
    assert [line.split("\t")[0] for line in skipped] == ["a.wav"] and "no video" in skipped[0]


def test_some_but_not_all_control_features_are_named_up_front_and_in_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only `sync` for a preset whose control encoder reads sync and clip: a warning before any clip
    names the missing feature and extractors that write it; the last line says which recipes the
    dataset serves."""
    from controlfoley.data.extract import extract_main

    base = ["--preset", "specmaskfoley_tiny", "--synthetic", "1"]
    with pytest.warns(UserWarning, match=r"without \['clip'\] the dataset serves the backbone recipe, not controlnet") as rec:
        assert extract_main([*base, "--extractors", "synthetic_sync", "--out", str(tmp_path / "part")]) == 0
    assert any("synthetic_clip" in str(w.message) for w in rec)
    out = capsys.readouterr().out.splitlines()[-1]
    assert "serves the recipes: backbone;" in out and "not controlnet" in out and "'clip'" in out and "synthetic_clip" in out

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert extract_main([*base, "--extractors", "synthetic_sync,synthetic_clip", "--mel", "--out", str(tmp_path / "all")]) == 0
    assert not any("not controlnet" in str(w.message) for w in rec)
    assert capsys.readouterr().out.splitlines()[-1] == (
        "for preset 'specmaskfoley_tiny' it serves the recipes: tokenizer, backbone, controlnet (its tokens are an untrained "
        "tokenizer's: for a backbone or controlnet worth sampling, train the tokenizer recipe and extract again with --tokenizer RUN)"
    )
    from controlfoley import build_model

    build_model("specmaskfoley_tiny").save(tmp_path / "tok.safetensors")  # a tokenizer checkpoint given: no such note
    assert extract_main([*base, "--extractors", "synthetic_sync,synthetic_clip", "--tokenizer", str(tmp_path / "tok.safetensors"), "--out", str(tmp_path / "tok")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "for preset 'specmaskfoley_tiny' it serves the recipes: backbone, controlnet"
    # --preset a checkpoint: the model it records (its tokenizer's overrides too), as train's --preset; it was refused
    # ("that is a file or folder, not a preset"), so a chain with a 1-D tokenizer repeated --model in extract
    small = build_model("specmaskfoley_tiny", tokenizer={"n_embed": 32}).save(tmp_path / "small.safetensors")
    argv = ["--preset", str(small), "--tokenizer", str(small), "--synthetic", "2", "--extractors", "synthetic_sync,synthetic_clip"]
    assert extract_main([*argv, "--out", str(tmp_path / "small")]) == 0
    index = json.loads((tmp_path / "small" / "index.json").read_text())
    assert index["info"]["codebook_size"] == 32 and index["info"]["preset"] == "specmaskfoley_tiny"
    with pytest.warns(UserWarning, match=rf"--preset {small} gives the model it records, not its weights: add --tokenizer {small}"):
        assert extract_main([*argv[:2], *argv[4:], "--out", str(tmp_path / "small_random")]) == 0  # no --tokenizer


def test_unknown_tags_name_the_list_line_before_any_read_even_with_skip_bad(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tag typo is a list error, not a bad input: every wrong line is named (file:line) before any
    media is read, with or without --skip-bad."""
    from controlfoley.data.extract import extract_main

    for n in ("a", "b", "c"):
        _wav(tmp_path / f"{n}.wav")
    (tmp_path / "clips.tsv").write_text("a.wav\tbell\n\n# b has a typo\nb.wav\tbel, thud\nc.wav\tsnarre\n", encoding="utf-8")
    base = ["--preset", "specmaskgit_tiny", "--list", str(tmp_path / "clips.tsv"), "--clap", "synthetic_clap"]
    for extra in ([], ["--skip-bad"]):
        with monkeypatch.context() as m:
            _no_media_reads(m)
            with pytest.warns(UserWarning, match="untrained tokenizer"):
                assert extract_main([*base, *extra, "--out", str(tmp_path / "d")]) == 2
        err = capsys.readouterr().err
        assert "2 input(s) have tags" in err and "clips.tsv:4" in err and "'bel'" in err and "clips.tsv:5" in err and "'snarre'" in err
        assert "clips.tsv:1" not in err and "Fix the tags" in err
        assert not (tmp_path / "d").exists()


class _OpenVocabulary:
    """A text extractor without a fixed vocabulary (nothing to check up front) that rejects one word."""

    name, output_key, dim = "open_vocab", "clap", 64

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if any("zzz" in t for t in texts):
            raise ConfigError(f"cannot encode {texts}")
        return torch.ones(len(texts), self.dim)


def test_a_late_tag_error_names_its_line_and_is_not_skipped(tmp_path: Path) -> None:
    from controlfoley.data.extract import Extraction, ListError, extract_files

    files = [str(_wav(tmp_path / f"{n}.wav")) for n in ("a", "b")]
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        ex = Extraction("specmaskgit_tiny", clap="synthetic_clap")
    ex.clap = _OpenVocabulary()  # as a plugin's open-vocabulary text encoder would be
    with pytest.raises(ListError, match=r"'b.wav' \(l.tsv:7\): open_vocab cannot encode its tags 'zzz'"):
        extract_files(tmp_path / "d", ex, files, tags=["x", "zzz"], ids=["a.wav", "b.wav"], where=["l.tsv:3", "l.tsv:7"], skip_bad=True)


def test_a_repeated_list_entry_is_refused_before_any_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from controlfoley.data.extract import extract_main

    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "b.wav")
    (tmp_path / "l.tsv").write_text("a.wav\nb.wav\n./a.wav\n", encoding="utf-8")  # ./a.wav is a.wav, as on the command line
    _no_media_reads(monkeypatch)
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main(["--preset", "specmaskgit_tiny", "--list", str(tmp_path / "l.tsv"), "--skip-bad", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "'a.wav' (" in err and "l.tsv:1) and again as " in err and "l.tsv:3" in err and "remove the repeated" in err
    assert not (tmp_path / "d").exists()


def _clip(v: float) -> dict[str, torch.Tensor]:
    return {"tokens": torch.full((5, 8), int(v)), "sync": torch.full((3, 2), v)}


def test_writer_refuses_a_duplicate_id_also_after_resume(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path / "w", shard_size=2)
    for i, cid in enumerate(["a", "b", "c"]):
        w.add(cid, _clip(i))
    with pytest.raises(DataError, match=r"clip id 'a' was already added to .* \(clip 0 of shard-00000.safetensors\)"):
        w.add("a", _clip(9))
    with pytest.raises(DataError, match=r"'c' was already added .*clip 0 of the shard being filled"):
        w.add("c", _clip(9))
    # interrupted here (never closed): the first shard (a, b) is kept, c is redone on resume
    r = ShardWriter(tmp_path / "w", shard_size=2, resume=True)
    assert r.clip_ids == ["a", "b"]
    with pytest.raises(DataError, match=r"'b' was already added .*clip 1 of shard-00000"):
        r.add("b", _clip(9))
    r.add("c", _clip(2))
    r.add("d", _clip(3))
    index = r.close()
    ds = ShardDataset(tmp_path / "w")
    assert [ds.clip_id(i) for i in range(index.n_clips)] == ["a", "b", "c", "d"]
    assert [int(ds[i]["tokens"][0, 0]) for i in range(4)] == [0, 1, 2, 3]
    assert json.loads((tmp_path / "w" / "index.json").read_text())["n_clips"] == 4 == ShardIndex.load(tmp_path / "w").n_clips


def test_resume_refuses_a_list_with_a_new_clip_before_the_finished_ones(tmp_path: Path) -> None:
    from controlfoley.data.extract import _write
    from controlfoley.data.shards import PROGRESS_FILE

    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _write(_stub(), out, _items(["a", "b", "c"], crash="c"), 3, shard_size=2, batch_size=1, overwrite=False, source="s")
    assert (out / PROGRESS_FILE).exists()  # shard 0 (a, b) finished
    with pytest.raises(DataError, match="cannot resume.*inputs changed"):
        _write(_stub(), out, _items(["new", "a", "b", "c"]), 4, shard_size=2, batch_size=1, overwrite=False, source="s", resume=True)
    index = _write(_stub(), out, _items(["a", "b", "c"]), 3, shard_size=2, batch_size=1, overwrite=False, source="s", resume=True)
    assert index.n_clips == 3


def test_extract_takes_generates_key_form_of_extractor(tmp_path: Path) -> None:
    """`--extractor KEY=NAME,...` (how generate spells it) works in extract too: KEY becomes the
    extractor's output_key (its builder's argument, or set on the built extractor); the plain
    NAME,... form is unchanged."""
    from controlfoley.data.extract import _extractor_spec, extract_main

    assert _extractor_spec("clip=clip_precomputed,root=/f,dim=12") == ("clip_precomputed", {"root": "/f", "dim": 12, "output_key": "clip"})
    assert _extractor_spec("clip_precomputed,root=/f") == ("clip_precomputed", {"root": "/f"})
    assert _extractor_spec("sync=synthetic_sync") == ("synthetic_sync", {"output_key": "sync"})  # set on the built extractor
    video = _video_with_audio(tmp_path / "v.mp4")
    listing = tmp_path / "list.tsv"
    listing.write_text(f"{video}\n", encoding="utf-8")
    argv = ["--preset", "specmaskfoley_tiny", "--list", str(listing), "--out", str(tmp_path / "ds"), "--extractor", "sync=synthetic_sync", "--extractor", "clip=synthetic_clip"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained tokenizer's warning
        assert extract_main(argv) == 0
    assert {"sync", "clip"} <= set(ShardDataset(tmp_path / "ds").keys)


def test_recorded_extractor_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dataset's (and so the checkpoint's) record of an extractor's files holds absolute paths:
    `generate` run from another folder still finds them."""
    import os

    from controlfoley.data.extract import _spec_args

    monkeypatch.chdir(tmp_path)
    args = _spec_args(("clip_precomputed", {"root": "feats", "dim": 12, "ids_tsv": "~/ids.tsv"}))
    assert args == {"root": str(tmp_path / "feats"), "dim": 12, "ids_tsv": os.path.expanduser("~/ids.tsv")}


def test_extraction_expands_a_tilde_in_its_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Extraction(tokenizer="~/tok.safetensors") was "no model checkpoint at ~/tok.safetensors", and
    an extractor's root=~/feats "feature folder ~/feats does not exist" (the dataset's record had it
    expanded): a shell does not expand `~` in `--tokenizer=~/...` or `--extractor clip=NAME,root=~/...`,
    nor Python in a string. Both are expanded now, and recorded expanded."""
    import shutil

    from controlfoley.data.extract import Extraction
    from controlfoley.presets import pretrained_path

    home = tmp_path / "home"
    (home / "feats").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    shipped = pretrained_path("specmaskfoley_synthetic")
    assert shipped is not None
    shutil.copy(shipped, home / "tok.safetensors")
    clip = ("clip_precomputed", {"root": "~/feats", "dim": 64})
    ex = Extraction("specmaskfoley_synthetic", tokenizer="~/tok.safetensors", extractors=["synthetic_sync", clip], mel=True)
    assert ex.tokenizer_source == str((home / "tok.safetensors").resolve()) and ex.info("x")["tokenizer"] == ex.tokenizer_source
    assert ex.video[1].root == home / "feats" and ex.info("x")["features"]["clip"]["args"]["root"] == str(home / "feats")


def test_whitespace_tags_are_no_prompt(tmp_path: Path) -> None:
    """Tags of only spaces (the Python API takes them as given) are an untagged line: a warning and
    the all-zero clap vector, not a lookup of '' in the vocabulary."""
    from controlfoley.data.extract import Extraction, extract_files

    files = [str(_wav(tmp_path / "a.wav")), str(_wav(tmp_path / "b.wav"))]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        extract_files(tmp_path / "ds", Extraction("specmaskgit_tiny", clap="synthetic_clap"), files, tags=["   ", "bell"])
    assert any("1 of 2 inputs have no tags" in str(w.message) for w in seen)
    ds = ShardDataset(tmp_path / "ds")
    vectors = [ds[i]["clap"].float() for i in range(2)]
    assert sorted(bool(v.abs().sum() > 0) for v in vectors) == [False, True]


def test_a_synthetic_count_below_one_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--synthetic -3 was "a split holds at most 1000000 clips, asked for -3", after the tokenizer was built."""
    import inspect

    from controlfoley.data import extract

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("the extraction was built before --synthetic was checked")

    monkeypatch.setattr(extract, "Extraction", no_tokenizer)
    for n in ("-3", "0"):
        assert extract.extract_main(["--preset", "specmaskfoley_tiny", "--synthetic", n, "--out", str(tmp_path / "ds")]) == 2
        assert f"--synthetic N renders N clips of the synthetic world: N must be positive, got {n}" in capsys.readouterr().err
    with pytest.raises(DataError, match="n_clips is the number of clips to render and must be positive, got -3"):
        inspect.unwrap(extract.extract_synthetic)(tmp_path / "ds", None, n_clips=-3)
    assert not (tmp_path / "ds").exists()


def test_an_unwritable_out_is_refused_before_the_model_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--out naming a file, a folder under a file, or a folder nobody can write used to fail with a
    FileExistsError / NotADirectoryError / OSError traceback after the model was built."""
    import re

    from controlfoley.data import extract

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before --out was checked")

    monkeypatch.setattr(extract, "Extraction", no_model)
    (tmp_path / "afile").write_text("")
    cases = {
        str(tmp_path / "afile"): "is a file, not a folder",
        str(tmp_path / "afile" / "ds"): r"output folder .*afile/ds cannot be written \(Not a directory\); choose another --out",
        "/proc/self/ds": r"output folder /proc/self/ds cannot be written .*choose another --out",
    }
    for out, expect in cases.items():
        assert extract.extract_main(["--preset", "specmaskfoley_tiny", "--synthetic", "2", "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert re.search(expect, err) and "--skip-bad" not in err, err


def test_a_full_disk_is_a_one_line_error_naming_the_shard_and_resume_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC used to be a raw `SafetensorError: ... No space left on device (os error 28)`
    traceback, with no path and no --resume hint."""
    import re

    from safetensors import SafetensorError

    from controlfoley.data import extract, shards

    real, calls = shards.save_file, []

    def full_at_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(*a, **k)

    out = tmp_path / "ds"
    args = ["--preset", "specmaskgit_tiny", "--mel", "--synthetic", "5", "--shard-size", "2", "--batch-size", "2", "--out", str(out)]
    monkeypatch.setattr(shards, "save_file", full_at_second)
    assert extract.extract_main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and re.fullmatch(
        rf"error: cannot write {re.escape(str(out / 'shard-00001.safetensors'))}: No space left on device; the disk is full: free space, "
        r"then re-run the same command with --resume\. The 1 finished shard of this extraction is kept \(progress\.json\): --resume continues after it\.",
        errors[0],
    ), errors
    monkeypatch.setattr(shards, "save_file", real)
    assert extract.extract_main([*args, "--resume"]) == 0
    assert ShardIndex.load(out).n_clips == 5


def test_an_interrupted_overwrite_keeps_the_dataset_and_says_how_to_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C in `extract --overwrite`: before the first new shard, the old dataset is untouched
    and the same command starts again (--resume would find nothing to resume); after it, --resume
    finishes the replacement, and only then does the old dataset go."""
    from controlfoley.data import extract

    out = tmp_path / "ds"
    base = ["--preset", "specmaskgit_tiny", "--mel", "--shard-size", "2", "--batch-size", "1", "--out", str(out)]
    assert extract.extract_main([*base, "--synthetic", "5"]) == 0
    before = ShardIndex.load(out).fingerprint()
    real, calls = extract.Extraction.audio_features, []

    def stop_at(n):
        calls.clear()

        def stopping(self, wavs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(self, wavs)

        monkeypatch.setattr(extract.Extraction, "audio_features", stopping)

    new = [*base, "--synthetic", "3", "--world-seed", "1"]
    stop_at(1)
    assert extract.extract_main([*new, "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert "before the first shard was finished" in err and "unchanged and still loads" in err and "--resume" not in err
    assert ShardIndex.load(out).fingerprint() == before
    stop_at(3)
    assert extract.extract_main([*new, "--overwrite"]) == 130
    assert "unchanged and still loads; continue with the same command and --resume instead of --overwrite" in capsys.readouterr().err
    assert ShardIndex.load(out).fingerprint() == before
    ShardDataset(out, verify="sha256")
    monkeypatch.setattr(extract.Extraction, "audio_features", real)
    assert extract.extract_main([*new, "--resume"]) == 0
    ds = ShardDataset(out, verify="sha256")
    assert [ds.clip_id(i) for i in range(len(ds))] == [f"synthetic-1-{i}" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.json", *(s.file for s in ds.index.shards)])


def _stub():
    """What _write uses of an Extraction, without a model."""
    from controlfoley.data.extract import Extraction

    class Stub(Extraction):
        video: list = []  # noqa: RUF012
        window_samples, window_s = 6, 1.0  # the items' 6-sample waveforms fill the window

        def __init__(self) -> None:
            pass

        def info(self, source: str) -> dict:
            return {"source": source}

        def audio_features(self, wavs):
            return [{"tokens": w[:6].long().view(2, 3)} for w in wavs]

        def video_features(self, video):
            return {}

    return Stub()


def _items(ids, bad=(), crash=None, read=None):
    from controlfoley.errors import MediaError

    def item(cid):
        def load():
            if read is not None:
                read.append(cid)
            if cid in bad:
                raise MediaError(f"{cid}: cannot be read")
            if cid == crash:
                raise RuntimeError("simulated crash")
            return torch.full((6,), float(len(cid))), None, None

        return cid, load

    return [item(c) for c in ids]


def test_an_overwrite_keeps_the_old_skipped_list_until_it_completes(tmp_path: Path) -> None:
    """skipped.tsv belongs to the dataset it lists the left-out clips of: a replacement writes its
    own as skipped.new.tsv, moved into place with the new index."""
    from controlfoley.data.extract import SKIPPED_FILE, _write

    out = tmp_path / "ds"
    common = dict(shard_size=2, batch_size=1, source="s", skip_bad=True)
    with pytest.warns(UserWarning, match="skipped 1 clip"):
        _write(_stub(), out, _items(["a", "x", "b"], bad={"x"}), 3, overwrite=False, **common)
    old = (out / SKIPPED_FILE).read_text()
    assert old.startswith("x\t")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _write(_stub(), out, _items(["c", "y", "d", "ee", "f"], bad={"y"}, crash="f"), 5, overwrite=True, **common)
    assert (out / SKIPPED_FILE).read_text() == old and (out / "skipped.new.tsv").read_text().startswith("y\t")
    assert ShardIndex.load(out).n_clips == 2
    with pytest.warns(UserWarning, match="skipped 1 clip"):
        index = _write(_stub(), out, _items(["c", "y", "d", "ee", "f"], bad={"y"}), 5, overwrite=False, resume=True, **common)
    assert index.n_clips == 4 and (out / SKIPPED_FILE).read_text().startswith("y\t") and not (out / "skipped.new.tsv").exists()
    index = _write(_stub(), out, _items(["g"]), 1, overwrite=True, **common)  # a replacement that skips nothing: no list
    assert index.n_clips == 1 and not (out / SKIPPED_FILE).exists()


def test_resume_drops_a_skipped_line_a_kill_cut_short(tmp_path: Path) -> None:
    """A kill in the middle of appending to skipped.tsv leaves a line without its newline; resume
    used to read it as a clip id, and the next append would continue it."""
    from controlfoley.data.extract import SKIPPED_FILE, _skipped_lines, _write

    out = tmp_path / "ds"
    common = dict(shard_size=2, batch_size=1, source="s", skip_bad=True, overwrite=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _write(_stub(), out, _items(["a", "x", "b", "c", "y"], bad={"x"}, crash="y"), 5, **common)
    with open(out / SKIPPED_FILE, "ab") as f:
        f.write(b"y\tcann\xc3")  # killed in the middle of y's line (and of a UTF-8 character)
    assert [line.split("\t")[0] for line in _skipped_lines(out / SKIPPED_FILE)] == ["x"]
    with pytest.warns(UserWarning, match="skipped 2 clip"):
        index = _write(_stub(), out, _items(["a", "x", "b", "c", "y", "d"], bad={"x", "y"}), 6, resume=True, **common)
    assert index.n_clips == 4
    assert [line.split("\t")[0] for line in (out / SKIPPED_FILE).read_text().splitlines()] == ["x", "y"]


def _wav_s(path: Path, seconds: float, seed: int = 0) -> Path:
    import soundfile as sf

    sf.write(path, 0.1 * torch.randn(int(22050 * seconds), generator=torch.Generator().manual_seed(seed)).numpy(), 22050)
    return path


def test_a_list_saved_with_a_byte_order_mark_reads_its_first_line(tmp_path: Path) -> None:
    """A list exported by a spreadsheet starts with a UTF-8 byte-order mark; its first path was
    '\\ufeffa.wav', 'no such file' (with --skip-bad: silently one clip fewer)."""
    from controlfoley.data.extract import extract_main

    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "b.wav")
    (tmp_path / "clips.tsv").write_bytes("a.wav\nb.wav\n".encode("utf-8-sig"))
    assert extract_main(["--preset", "specmaskgit_tiny", "--mel", "--list", str(tmp_path / "clips.tsv"), "--out", str(tmp_path / "ds"), "--skip-bad"]) == 0
    ds = ShardDataset(tmp_path / "ds")
    assert [ds.clip_id(i) for i in range(len(ds))] == ["a.wav", "b.wav"] and not (tmp_path / "ds" / "skipped.tsv").exists()


def test_missing_files_are_named_before_any_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo on line 9000 of a list stopped the extraction there, hours in (and fixing the list then
    changes the inputs, which --resume refuses): every missing file is named up front, with its line
    and where it was looked for."""
    from controlfoley.data.extract import SKIPPED_FILE, extract_main

    _wav(tmp_path / "a.wav")
    (tmp_path / "clips.tsv").write_text("a.wav\nsub/nope.wav\nb.wav\n", encoding="utf-8")
    base = ["--preset", "specmaskgit_tiny", "--mel", "--list", str(tmp_path / "clips.tsv")]
    with monkeypatch.context() as m:
        _no_media_reads(m)
        assert extract_main([*base, "--out", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err
    assert "2 input(s) do not exist: 'sub/nope.wav' (" in err and "clips.tsv:2" in err and "'b.wav' (" in err and "clips.tsv:3" in err
    assert f"looked for as {tmp_path / 'sub' / 'nope.wav'}" in err and "--skip-bad" in err
    assert not (tmp_path / "strict").exists()
    with pytest.warns(UserWarning, match="skipped 2 clip"):
        assert extract_main([*base, "--out", str(tmp_path / "lax"), "--skip-bad"]) == 0
    assert [line.split("\t")[0] for line in (tmp_path / "lax" / SKIPPED_FILE).read_text().splitlines()] == ["sub/nope.wav", "b.wav"]


def test_resume_refuses_a_list_whose_tags_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the clip ids were compared on resume: tags changed after an interruption gave a dataset
    whose finished shards held the old tags and the rest the new ones."""
    from controlfoley.data import extract
    from controlfoley.data.extract import Extraction, extract_files

    files = [str(_wav(tmp_path / f"{c}.wav")) for c in "abc"]
    ex = Extraction("specmaskgit_tiny", clap="synthetic_clap", mel=True)
    real = extract.Extraction.audio_features
    calls: list[int] = []

    def crash_on_second(self: Any, wavs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(self, wavs)

    out = tmp_path / "ds"
    with monkeypatch.context() as m:
        m.setattr(extract.Extraction, "audio_features", crash_on_second)
        with pytest.raises(RuntimeError, match="simulated crash"):
            extract_files(out, ex, files, tags=["bell", "thud", "ping"], shard_size=1, batch_size=1)
    with pytest.raises(DataError, match=r"cannot resume .*these differ: source: '3 files \(ids and tags digest [0-9a-f]{12}\)' then, '3 files \(ids and tags digest [0-9a-f]{12}\)' now"):
        extract_files(out, ex, files, tags=["knock", "thud", "ping"], shard_size=1, batch_size=1, resume=True)  # a.wav's tags changed
    index = extract_files(out, ex, files, tags=["bell", "thud", "ping"], shard_size=1, batch_size=1, resume=True)
    assert index.n_clips == 3


def test_clips_much_longer_or_shorter_than_the_window_are_counted(tmp_path: Path) -> None:
    """A 30 s video gave one clip of its first window and a 1 s one a clip of mostly padding, both
    silently: one warning each at the end names how many, which, and what was stored."""
    from controlfoley.data.extract import Extraction, extract_files

    ex = Extraction("specmaskgit_tiny", mel=True)
    window = ex.window_s
    files = [_wav_s(tmp_path / "long.wav", 3 * window), _wav_s(tmp_path / "short.wav", 0.5 * window), _wav_s(tmp_path / "fits.wav", window - 0.05)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        extract_files(tmp_path / "ds", ex, [str(f) for f in files], ids=["long.wav", "short.wav", "fits.wav"])
    texts = [str(w.message) for w in seen]
    long = [t for t in texts if "windows long or longer" in t]
    short = [t for t in texts if "shorter than 90%" in t]
    assert len(long) == 1 and long[0].startswith("1 clip(s)") and f"'long.wav' ({3 * window:.1f} s)" in long[0] and "cut it into window-long pieces" in long[0]
    assert len(short) == 1 and short[0].startswith("1 clip(s)") and "'short.wav'" in short[0] and "zero-padded to the window" in short[0]
    assert "fits.wav" not in " ".join(long + short)


def test_files_takes_folders_and_all_skipped_names_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--files FOLDER` (generate's form) was one unreadable input ('is a folder'), with a hint to
    use --skip-bad, which then ended in 'no clips were added': now a folder stands for the media
    files in it; an input list that is skipped entirely says why."""
    from controlfoley.data.extract import extract_main

    media = tmp_path / "media"
    media.mkdir()
    for name in ("b.wav", "a.wav"):
        _wav(media / name)
    (media / "notes.txt").write_text("not media", encoding="utf-8")
    (media / "sub").mkdir()
    base = ["--preset", "specmaskgit_tiny", "--mel"]
    assert extract_main([*base, "--files", str(media), "--out", str(tmp_path / "ds")]) == 0
    ds = ShardDataset(tmp_path / "ds")
    assert [Path(ds.clip_id(i)).name for i in range(len(ds))] == ["a.wav", "b.wav"]
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert extract_main([*base, "--files", str(tmp_path / "empty"), "--out", str(tmp_path / "e")]) == 2
    assert "a folder with no video or audio files directly in it" in capsys.readouterr().err
    (media / "bad.wav").write_bytes(b"not audio")
    assert extract_main([*base, "--files", str(media / "bad.wav"), "--out", str(tmp_path / "bad"), "--skip-bad"]) == 2
    err = capsys.readouterr().err
    assert "all 1 input(s) were skipped" in err and "bad.wav" in err and "skipped.tsv" in err


def _aac_audio(path: Path, seconds: float = 1.0, sr: int = 44100) -> Path:
    """An audio-only AAC file (what a phone's voice memo or an .m4a download holds), whatever `path`'s suffix."""
    import av

    samples = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * sr))).astype(np.float32)[None]
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=sr, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = sr
        for packet in [*s.encode(frame), *s.encode(None)]:
            c.mux(packet)
    return path


def test_folders_take_more_media_types_name_what_they_leave_out_and_audio_is_read_by_content(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A walkthrough: a folder left out .m4a / .aac audio and .3gp / .mts / .flv video without a
    word (and evaluate then said 'no reference' for a .MTS beside it), and an .mp3 holding AAC was
    'cannot decode ... Is it a valid WAV/FLAC/OGG file?'. Now those suffixes count, a folder names
    the files it leaves out, and an audio file libsndfile cannot read is read with FFmpeg."""
    import logging

    from controlfoley._media import VIDEO_SUFFIXES, left_out
    from controlfoley.data.extract import extract_main
    from controlfoley.generate_cli import _expand_folders

    media = tmp_path / "media"
    media.mkdir()
    _aac_audio(media / "memo.m4a")
    _aac_audio(media / "named.mp3")  # AAC inside, mp3 by name
    _wav(media / "plain.wav")
    (media / "notes.txt").write_text("not media", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert extract_main(["--preset", "specmaskgit_tiny", "--mel", "--files", str(media), "--out", str(tmp_path / "ds")]) == 0
    ds = ShardDataset(tmp_path / "ds")
    assert sorted(Path(ds.clip_id(i)).name for i in range(len(ds))) == ["memo.m4a", "named.mp3", "plain.wav"]
    assert "left out 1 file(s) whose suffix is not one of the video and audio types a folder stands for: notes.txt" in caplog.text
    assert {".3gp", ".mts", ".m2ts", ".flv", ".wmv", ".ogv"} <= VIDEO_SUFFIXES
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("cam.MTS", "phone.3gp", "clip.xyz", "generate.json"):
        (videos / name).write_bytes(b"")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert [Path(f).name for f in _expand_folders([str(videos)])] == ["cam.MTS", "phone.3gp"]
    assert "left out 1 file(s) whose suffix is not one of the video types a folder stands for: clip.xyz; name a file directly" in caplog.text
    assert left_out(videos, VIDEO_SUFFIXES | {".xyz", ".json"}, "video") is None


def test_a_video_named_as_audio_is_read_as_the_video_it_holds(tmp_path: Path) -> None:
    """A video file named .wav was 'an audio file' by its suffix: refused with video extractors
    ('an audio file has no video'), and 'Format not recognised' without them (libsndfile). Now a
    file holding a moving picture gives its frames, and libsndfile's refusal falls back to FFmpeg."""
    import shutil

    from controlfoley.data.extract import extract_main

    named = tmp_path / "clip.wav"
    shutil.copy(_video_with_audio(tmp_path / "clip.mp4"), named)
    base = ["--preset", "specmaskfoley_tiny", "--files", str(named), "--model", 'control_encoder={"sync_dim": 24, "clip_dim": 12}']
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained tokenizer's
        assert extract_main([*base, "--extractor", "synthetic_sync,dim=24", "--out", str(tmp_path / "v")]) == 0
        assert extract_main([*base, "--mel", "--out", str(tmp_path / "m")]) == 0
    assert "sync" in ShardDataset(tmp_path / "v").keys and len(ShardDataset(tmp_path / "m")) == 1


def _noise_video(path: Path, seconds: float, sr: int = 44100) -> Path:
    """A 4 fps MP4 whose AAC track at `sr` (resampled when read at the models' 22.05 kHz) is noise."""
    from controlfoley.video import write_video

    audio = 0.2 * torch.randn(int(seconds * sr), generator=torch.Generator().manual_seed(1))
    return write_video(path, torch.zeros(max(1, round(seconds * 4)), 32, 48, 3, dtype=torch.uint8), 4.0, audio=audio, sample_rate=sr)


def test_a_videos_audio_is_read_only_as_far_as_the_clip_and_its_features_are_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Extraction decoded a long video's whole audio track (memory growing with the video) for one
    window: now it reads 1.5 windows (the window, and enough to count a long clip), and the stored
    tokens and mel are those of a whole read; the long-clip warning says it read no further."""
    import controlfoley.video
    from controlfoley.data.extract import Extraction, extract_files

    ex = Extraction("specmaskgit_tiny", mel=True)
    files = [str(_noise_video(tmp_path / "long.mp4", 3 * ex.window_s)), str(_noise_video(tmp_path / "fits.mp4", 1.2 * ex.window_s))]
    real = controlfoley.video.read_audio_track
    asked: list[float | None] = []

    def bounded(path: Any, sample_rate: int, **kwargs: Any) -> torch.Tensor:
        asked.append(kwargs.get("max_seconds"))
        return real(path, sample_rate, **kwargs)

    def whole(path: Any, sample_rate: int, **kwargs: Any) -> torch.Tensor:
        return real(path, sample_rate)

    seen: dict[str, list[str]] = {}
    for name, read in (("bounded", bounded), ("whole", whole)):
        with monkeypatch.context() as m, warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            m.setattr(controlfoley.video, "read_audio_track", read)
            extract_files(tmp_path / name, ex, files, ids=["long.mp4", "fits.mp4"])
        seen[name] = [str(w.message) for w in rec if "windows long or longer" in str(w.message)]
    window = ex.window_samples
    assert len(asked) == 2 and all(s is not None and round(s * 22050) == math.ceil(1.5 * window) for s in asked)
    a, b = ShardDataset(tmp_path / "bounded"), ShardDataset(tmp_path / "whole")
    for i in range(2):
        for key in ("tokens", "mel"):
            assert torch.equal(a[i][key], b[i][key]), (a.clip_id(i), key)
    cap_s = math.ceil(1.5 * window) / 22050
    assert len(seen["bounded"]) == 1 and f"'long.mp4' ({cap_s:.1f} s or more)" in seen["bounded"][0] and "fits.mp4" not in seen["bounded"][0]
    assert len(seen["whole"]) == 1 and f"'long.mp4' ({3 * ex.window_s:.1f} s)" in seen["whole"][0]


class _Motion:
    """A user's frame extractor: `output_key` a class attribute, no builder argument for it."""

    name, output_key, fps = "test_noannot", "sync", 24.0

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.float().mean((1, 2, 3))[:, None].expand(-1, self.dim) / 255


class _Fixed(_Motion):
    """One whose feature key cannot change (a read-only property)."""

    name = "test_fixed"

    @property
    def output_key(self) -> str:  # type: ignore[override]
        return "sync"


def test_extract_takes_plugin_extractors_as_generate_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plugin extractor whose builder has no return annotation, or no output_key argument, was
    refused with "NAME always writes its own feature, not 'sync'" (the key was read off the
    builder's signature), though `generate --extractor motion=NAME` takes it: now the built
    extractor writes KEY. One whose output_key cannot be set is still refused, naming the fix."""
    from conftest import registered

    from controlfoley import EXTRACTORS
    from controlfoley.data.extract import extract_main

    def no_annotation(*, dim: int = 24):
        return _Motion(dim)

    base = ["--preset", "specmaskfoley_tiny", "--synthetic", "2", "--model", 'control_encoder={"sync_dim": 24, "clip_dim": 12}']
    with registered(EXTRACTORS, "test_noannot", no_annotation), registered(EXTRACTORS, "test_fixed", lambda *, dim=24: _Fixed(dim)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the untrained tokenizer's, and (for motion) the missing control features'
            assert extract_main([*base, "--extractor", "sync=test_noannot", "--extractor", "clip=synthetic_clip,dim=12", "--out", str(tmp_path / "a")]) == 0
            assert extract_main([*base, "--extractor", "motion=test_noannot", "--out", str(tmp_path / "b")]) == 0
        assert {"sync", "clip"} <= set(ShardDataset(tmp_path / "a").keys)
        info = json.loads((tmp_path / "b" / "index.json").read_text())["info"]["features"]
        assert set(ShardDataset(tmp_path / "b").keys) == {"tokens", "motion"}
        assert info == {"motion": {"extractor": "test_noannot", "args": {}, "fps": 24.0, "dim": 24, "decode_size": 64}}  # args: the builder's only
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert extract_main([*base, "--extractor", "motion=test_fixed", "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert "error: extractor test_fixed writes its own feature 'sync' and its output_key cannot be set to 'motion'" in err
        assert "give this one's builder an output_key argument" in err and "Traceback" not in err


def test_extraction_decodes_frames_at_the_size_generate_decodes_them(tmp_path: Path) -> None:
    """extract decoded each video at its source size (a walkthrough: 23 GB for a 1 s 1080p clip,
    OOM-killed; generate's peak was 0.87 GB), and so gave a frame extractor other frames in training
    than generate gives it. Now both decode at the extractor's frame_size, else FRAME_SIZE."""
    from conftest import registered

    from controlfoley import EXTRACTORS
    from controlfoley.data.extract import extract_main
    from controlfoley.data.extractors import FRAME_SIZE
    from controlfoley.pipeline import FoleyPipeline
    from controlfoley.video import write_video

    seen: dict[str, list[tuple[int, int]]] = {"plain": [], "sized": []}

    class Spy(_Motion):
        def __init__(self, dim: int, where: str) -> None:
            super().__init__(dim)
            self.where = where

        def __call__(self, frames: torch.Tensor) -> torch.Tensor:
            seen[self.where].append(tuple(frames.shape[1:3]))
            return super().__call__(frames)

    class Sized(Spy):
        frame_size = 24

    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 255, (8, 240, 320, 3), dtype=torch.uint8, generator=g)  # 2 s at 4 fps, 320 x 240
    audio = 0.1 * torch.randn(2 * 44100, generator=g)
    video = write_video(tmp_path / "v.mp4", frames, 4.0, audio=audio, sample_rate=44100)
    base = ["--preset", "specmaskfoley_tiny", "--mel", "--files", str(video)]
    with registered(EXTRACTORS, "test_spy", lambda *, dim=24: Spy(dim, "plain")), registered(EXTRACTORS, "test_spy24", lambda *, dim=24: Sized(dim, "sized")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # short clip, features the model does not read
            assert extract_main([*base, "--extractor", "motion=test_spy", "--extractor", "pace=test_spy24", "--out", str(tmp_path / "d")]) == 0
        assert set(seen["plain"]) == {(FRAME_SIZE, FRAME_SIZE)} and set(seen["sized"]) == {(24, 24)}
        # recorded, so that resuming an extraction begun under the old rule (source-size frames) is refused
        # as "other settings" (ShardWriter compares the whole record) rather than mixing the two (a review)
        record = json.loads((tmp_path / "d" / "index.json").read_text())["info"]["features"]
        assert (record["motion"]["decode_size"], record["pace"]["decode_size"]) == (FRAME_SIZE, 24)
        pipe = object.__new__(FoleyPipeline)  # only what _decode reads: its default frame size
        pipe.frame_size = FRAME_SIZE
        decoded, _ = pipe._decode(video, {"motion": Spy(24, "plain"), "pace": Sized(24, "sized")})
    assert decoded["motion"].shape[1:3] == (FRAME_SIZE, FRAME_SIZE) and decoded["pace"].shape[1:3] == (24, 24)  # generate's own
    stored = ShardDataset(tmp_path / "d")[0]
    want = Spy(24, "plain")(decoded["motion"])
    assert torch.allclose(stored["motion"][: want.shape[0]].float(), want, atol=1e-3)  # the frames generate gives, as stored


def test_a_preset_named_as_tokenizer_is_recorded_as_its_weights_and_a_run_from_it_is_not_warned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--tokenizer specmaskfoley_synthetic` (a preset's name standing for its shipped weights) is
    recorded as those weights' file and the name, not as a path of that name under the folder
    extract ran in: a run initialised from the preset (or its file) from another folder is not
    warned; one with another tokenizer still is, with advice naming the preset. A real folder of
    that name is recorded as before, and an older index's made-up path reads as the preset."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from controlfoley.builder import model_config
    from controlfoley.data.extract import Extraction, extract_synthetic
    from controlfoley.presets import pretrained_path
    from controlfoley.train.config import TrainConfig
    from controlfoley.train.provenance import token_provenance_problems

    name = "specmaskfoley_synthetic"
    shipped = pretrained_path(name)
    assert shipped is not None
    (tmp_path / "extract_here").mkdir()
    monkeypatch.chdir(tmp_path / "extract_here")
    ds = tmp_path / "ds"
    extract_synthetic(ds, Extraction(name, tokenizer=name), n_clips=2)
    info = ShardDataset(ds).info
    assert info["tokenizer"] == str(shipped.resolve()) and info["tokenizer_preset"] == name

    monkeypatch.chdir(tmp_path)  # training runs elsewhere
    config = model_config(name)

    def problems(recipe: str, init: str | None, record: dict[str, Any] = info) -> list[str]:
        cfg = TrainConfig.for_recipe(recipe, preset=name, data=str(ds), out="o", init=init)
        return token_provenance_problems(cfg, config, ds, record)

    for recipe in ("backbone", "controlnet"):
        assert problems(recipe, name) == [] and problems(recipe, str(shipped)) == []
    # another tokenizer: the shipped weights with one tokenizer tensor changed
    other = tmp_path / "other.safetensors"
    with safe_open(str(shipped), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in tensors if k.startswith("tokenizer.") and tensors[k].is_floating_point())
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(other), metadata=meta)
    (problem,) = problems("backbone", str(other))
    assert f"came from the tokenizer of preset {name} (its shipped weights, {shipped.resolve()})" in problem
    assert "other paths, and other tokenizer weights" in problem and f"Train with --init {name}," in problem
    (problem,) = problems("backbone", None)
    assert "this run's tokenizer is random" in problem and f"Train with --init {name}." in problem
    # an index written before: the name as a path under extract's folder (there is none) reads as the preset
    old = {**info, "tokenizer": str(tmp_path / "extract_here" / name)}
    del old["tokenizer_preset"]
    assert problems("controlnet", name, old) == []
    (problem,) = problems("backbone", str(other), old)
    assert f"preset {name} (its shipped weights" in problem and "no longer holds a model" not in problem
    # a real folder of that name is what the name loads there: recorded as its path, as any path
    (tmp_path / name).mkdir()
    (tmp_path / name / "model.safetensors").write_bytes(other.read_bytes())
    ex = Extraction(name, tokenizer=name)
    assert ex.tokenizer_source == str((tmp_path / name).resolve()) and "tokenizer_preset" not in ex.info("x")


def test_an_extraction_interrupted_before_the_preset_record_resumes_with_the_same_command(tmp_path: Path) -> None:
    """An extraction started by an older version with `--tokenizer specmaskfoley_synthetic` recorded
    the name as a path under its folder; resumed now (the same command, which records the weights
    file and `tokenizer_preset`), it is the same tokenizer and continues. Another tokenizer is
    still 'other settings'."""
    from controlfoley.presets import pretrained_path

    shipped = pretrained_path("specmaskfoley_synthetic")
    assert shipped is not None
    base = {"grid": [5, 53], "codebook_size": 64}
    old = {**base, "tokenizer": str(tmp_path / "specmaskfoley_synthetic")}  # as the older version wrote it
    new = {**base, "tokenizer": str(shipped.resolve()), "tokenizer_preset": "specmaskfoley_synthetic"}
    codes = {"tokens": torch.zeros(5, 53, dtype=torch.int16)}

    def interrupted(root: Path) -> None:
        w = ShardWriter(root, shard_size=1, info=old)
        w.add("a", codes)
        w.add("b", codes)  # both shards are finished and recorded; then the process dies (no close)

    interrupted(tmp_path / "ds")
    with ShardWriter(tmp_path / "ds", shard_size=1, info=new, resume=True) as w:
        w.add("c", codes)
    ds = ShardDataset(tmp_path / "ds")
    assert [ds.clip_id(i) for i in range(len(ds))] == ["a", "b", "c"]  # the interrupted shards kept, the new clip added
    interrupted(tmp_path / "other")
    with pytest.raises(DataError, match="other settings .*tokenizer"):
        ShardWriter(tmp_path / "other", shard_size=1, info={**base, "tokenizer": str(tmp_path / "my_tokenizer_run")}, resume=True)


def test_synthetic_clips_are_rendered_at_the_models_sample_rate(tmp_path: Path) -> None:
    """extract_synthetic rendered the world at its default 22.05 kHz whatever the model's rate and
    stored those samples as the model's (a 16 kHz model got 5.9 s of a clip as its 8.2 s window,
    time-stretched against the video); a rate the world cannot render is refused, naming both."""
    from controlfoley.data.extract import Extraction, extract_synthetic
    from controlfoley.data.synthetic import SyntheticWorld

    ex = Extraction("specmaskgit_tiny", mel=True, model_overrides={"mel": {"name": "hifigan", "sample_rate": 16000}})
    assert ex.model.sample_rate == 16000
    extract_synthetic(tmp_path / "ds", ex, n_clips=1)
    clip = SyntheticWorld(seed=0, duration_s=ex.window_s, sample_rate=16000).clip(0)
    assert clip.audio.shape[0] == ex.window_samples
    want, got = ex.audio_features([clip.audio])[0], ShardDataset(tmp_path / "ds")[0]
    assert torch.equal(got["mel"], want["mel"].half()) and torch.equal(got["tokens"].long(), want["tokens"].long())
    low = Extraction("specmaskgit_tiny", mel=True, model_overrides={"mel": {"name": "hifigan", "sample_rate": 8000, "fmax": 4000}})
    with pytest.raises(DataError, match=r"sample rate is 8000 Hz.*22050 Hz.*sample_rate >= 16000.*22050 Hz.*--files"):
        extract_synthetic(tmp_path / "low", low, n_clips=1)
    assert not (tmp_path / "low").exists()


class _FirstPixel:
    """A video extractor whose feature row is the first pixel's red value of the frame it saw."""

    name, output_key, fps, dim = "first_pixel", "motion", 10.0, 1

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return frames[:, 0, 0, :1].float()


def test_a_window_holds_the_video_frames_read_frames_gives(tmp_path: Path) -> None:
    """Extraction counted a window's frames as floor(video_s x fps + 1e-6), read_frames(max_seconds=)
    with the float's exact binary value: for 9.1 s at 10 fps it wanted 91 frames of the 90 read, and
    padded the window with a copy of the last one although the video goes on. One rule now, 9.1 s
    as written (seconds_fraction): 91 frames, the one shown at 9.0 s the last."""
    from controlfoley.data.extract import Extraction, VideoSource
    from controlfoley.video import read_frames, write_video

    frames = torch.stack([torch.full((16, 16, 3), 2 * i, dtype=torch.uint8) for i in range(100)])  # 10 s at 10 fps
    video = write_video(tmp_path / "ramp.mp4", frames, 10.0)
    ex = object.__new__(Extraction)  # only what video_features reads: the extractors and the seconds of video
    ex.video, ex.video_s, ex.video_span = [_FirstPixel()], 9.1, Fraction(91, 10)
    read = read_frames(video, 10.0, max_seconds=ex.video_s).frames
    assert ex.n_video_frames(10.0) == read.shape[0] == 91
    assert read[-1, 0, 0, 0].item() == frames[90, 0, 0, 0].item()  # the frame shown at 9.0 s
    rows = ex.video_features(VideoSource(lambda fps, size: read_frames(video, fps, size=size, max_seconds=ex.video_s).frames, video))["motion"]
    assert torch.equal(rows[:, 0], read[:, 0, 0, 0].float())


class _Killed(BaseException):
    """A kill (SIGKILL) at a chosen point of close(): nothing after it runs."""


def _kill_close(monkeypatch: pytest.MonkeyPatch, after: str) -> None:
    """Stop ShardWriter.close() right after it swapped in the new index ('index'), or when it
    removes progress.json, its last step before removing the old shards ('progress')."""
    from controlfoley.data import shards

    if after == "index":
        real_write = shards.atomic_write_text

        def write(path: Any, text: str) -> None:
            real_write(path, text)
            if Path(path).name == shards.INDEX_FILE:
                raise _Killed

        monkeypatch.setattr(shards, "atomic_write_text", write)
    else:
        real_unlink = Path.unlink

        def unlink(self: Path, missing_ok: bool = False) -> None:
            if self.name == shards.PROGRESS_FILE and self.exists():  # (not overwrite's removal of a record that is not there)
                raise _Killed
            real_unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", unlink)


@pytest.mark.parametrize("replacing", [False, True])
def test_a_kill_after_the_index_swap_resumes_with_the_skipped_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replacing: bool) -> None:
    """A kill between close()'s index swap and its removal of progress.json: --resume looked for the
    skipped list under its staged name (skipped.new.tsv, already moved into place, or never used in
    a new folder) and failed with a false 'the inputs changed'."""
    from controlfoley.data.extract import SKIPPED_FILE, _write

    out = tmp_path / "ds"
    common = dict(shard_size=1, batch_size=1, source="s", skip_bad=True)
    if replacing:
        with pytest.warns(UserWarning, match="skipped 1 clip"):
            _write(_stub(), out, _items(["old", "z"], bad={"z"}), 2, overwrite=False, **common)
    ids = ["a", "x", "b", "c"]
    with monkeypatch.context() as m:
        _kill_close(m, "progress")
        with pytest.raises(_Killed):
            _write(_stub(), out, _items(ids, bad={"x"}), 4, overwrite=replacing, **common)
    assert ShardIndex.load(out).n_clips == 3 and (out / "progress.json").exists()  # the new dataset is in place
    read: list[str] = []  # the resume finishes the tidying and reads no clip again (a skipped one that reads now
    index = _write(_stub(), out, _items(ids, bad={"x"}, read=read), 4, overwrite=False, resume=True, **common)  # would add a shard)
    assert read == []
    assert index.n_clips == 3 and index.fingerprint() == ShardIndex.load(out).fingerprint()
    assert [line.split("\t")[0] for line in (out / SKIPPED_FILE).read_text().splitlines()] == ["x"]
    assert sorted(p.name for p in out.iterdir()) == sorted([SKIPPED_FILE, "index.json", *(s.file for s in index.shards)])


@pytest.mark.parametrize("new_skips", [True, False])
def test_a_replacement_killed_right_after_its_index_swap_gets_its_own_skipped_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_skips: bool
) -> None:
    """Killed before close() moved skipped.new.tsv into place (or removed the old dataset's list,
    when the new one skipped nothing): --resume, or --overwrite again, finishes that first, so the
    folder never lists another dataset's skipped clips."""
    from controlfoley.data.extract import SKIPPED_FILE, _write
    from controlfoley.data.shards import ShardWriter as Writer

    out = tmp_path / "ds"
    common = dict(shard_size=1, batch_size=1, source="s", skip_bad=True)
    with pytest.warns(UserWarning, match="skipped 1 clip"):
        _write(_stub(), out, _items(["old", "z"], bad={"z"}), 2, overwrite=False, **common)
    ids, bad = ["a", "x", "b"], {"x"} if new_skips else set()
    with monkeypatch.context() as m:
        _kill_close(m, "index")
        with pytest.raises(_Killed):
            _write(_stub(), out, _items(ids, bad=bad), 3, overwrite=True, **common)
    assert [line.split("\t")[0] for line in (out / SKIPPED_FILE).read_text().splitlines()] == ["z"]  # still the old dataset's list
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = _write(_stub(), out, _items(ids, bad=bad), 3, overwrite=False, resume=True, **common)
    assert index.n_clips == (2 if new_skips else 3) and not (out / "skipped.new.tsv").exists() and not (out / "progress.json").exists()
    listed = [line.split("\t")[0] for line in (out / SKIPPED_FILE).read_text().splitlines()] if (out / SKIPPED_FILE).exists() else None
    assert listed == (["x"] if new_skips else None)
    # the same kill, then --overwrite: the finished dataset gets its list before it is replaced
    with monkeypatch.context() as m:
        _kill_close(m, "index")
        with pytest.raises(_Killed):
            _write(_stub(), out, _items(["d", "y"], bad={"y"}), 2, overwrite=True, **common)
    Writer(out, shard_size=1, overwrite=True)
    assert [line.split("\t")[0] for line in (out / SKIPPED_FILE).read_text().splitlines()] == ["y"]
    assert not (out / "skipped.new.tsv").exists() and not (out / "progress.json").exists()


def test_ctrl_c_after_the_index_swap_says_the_new_dataset_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C between close()'s index swap and the removal of progress.json: the message called the
    dataset in --out 'unchanged' (it is the new one) and --resume then had to finish the tidying."""
    from controlfoley.data import shards
    from controlfoley.data.extract import extract_main

    out = tmp_path / "ds"
    base = ["--preset", "specmaskgit_tiny", "--mel", "--shard-size", "1", "--batch-size", "1", "--out", str(out)]
    assert extract_main([*base, "--synthetic", "2"]) == 0
    new = [*base, "--synthetic", "3", "--world-seed", "1"]
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name == shards.PROGRESS_FILE and self.exists():  # close()'s removal (--overwrite removes none at the start here)
            raise KeyboardInterrupt
        real_unlink(self, missing_ok=missing_ok)

    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", unlink)
        assert extract_main([*new, "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert "unchanged" not in err and f"the new dataset in {out} is complete and loads" in err and "--resume instead of --overwrite" in err, err
    assert ShardIndex.load(out).n_clips == 3
    assert extract_main([*new, "--resume"]) == 0
    ds = ShardDataset(out, verify="sha256")
    assert [ds.clip_id(i) for i in range(3)] == [f"synthetic-1-{i}" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.json", *(s.file for s in ds.index.shards)])


def test_skip_bad_leaves_out_a_video_whose_precomputed_features_are_unusable(tmp_path: Path) -> None:
    """A feature file holding NaN (or of the wrong width, or integers) raised a ShapeError, which
    --skip-bad did not catch: one bad file stopped the whole extraction. It is a DataError naming
    the file now (still a ShapeError, with the same message, for code that catches that)."""
    import numpy as np

    from controlfoley.data.extract import SKIPPED_FILE, Extraction, VideoSource, _write
    from controlfoley.data.real_extractors import synchformer_precomputed
    from controlfoley.errors import ShapeError

    feats = tmp_path / "feats"
    feats.mkdir()
    rows = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    np.save(feats / "ok.npy", rows)
    np.save(feats / "wide.npy", np.zeros((20, 5), np.float32))
    np.save(feats / "ints.npy", np.zeros((20, 4), np.int64))
    bad = rows.copy()
    bad[3, 1] = np.nan
    np.save(feats / "nan.npy", bad)

    class WithFeatures(type(_stub())):
        video = [synchformer_precomputed(root=str(feats), dim=4, fps=10.0)]  # noqa: RUF012
        video_s, video_span = 1.0, Fraction(1)
        video_features = Extraction.video_features  # the real one

    ex = WithFeatures()
    with pytest.raises(DataError, match=r"nan\.npy: features hold NaN or infinite values; re-extract them") as e:
        ex.video_features(VideoSource(lambda fps, size: torch.zeros(1), tmp_path / "nan.mp4"))
    assert isinstance(e.value, ShapeError)

    def item(name: str) -> Any:
        return name, lambda: (torch.full((6,), 1.0), VideoSource(lambda fps, size: torch.zeros(1), tmp_path / f"{name}.mp4"), None)

    names = ["ok", "nan", "wide", "ints", "missing"]
    with pytest.warns(UserWarning, match="skipped 4 clip"):
        index = _write(ex, tmp_path / "ds", [item(n) for n in names], 5, shard_size=2, batch_size=1, overwrite=False, source="s", skip_bad=True)
    assert index.n_clips == 1 and index.features["sync"].shape == (10, 4)
    why = dict(line.split("\t") for line in (tmp_path / "ds" / SKIPPED_FILE).read_text().splitlines())
    assert list(why) == names[1:]
    assert "nan.npy: features hold NaN" in why["nan"] and "wide.npy: features must be [frames, 4]" in why["wide"]
    assert "ints.npy: features must be floating point" in why["ints"] and "no features for video missing.mp4" in why["missing"]
    with pytest.raises(DataError, match=r"nan\.npy: features hold NaN"):  # without skip_bad: the same error stops it
        _write(ex, tmp_path / "strict", [item(n) for n in names], 5, shard_size=2, batch_size=1, overwrite=False, source="s")


@pytest.mark.parametrize("seconds", ["nan", "inf", "-inf", "0", "-2"])
def test_video_seconds_must_be_a_positive_finite_number(tmp_path: Path, capsys: pytest.CaptureFixture[str], seconds: str) -> None:
    """--video-seconds nan and inf passed the `<= 0` check: nan failed per clip with 'cannot convert
    float NaN to integer', inf with an uncaught OverflowError; neither named the flag."""
    from controlfoley.data.extract import extract_main

    out = tmp_path / "ds"
    assert extract_main(["--preset", "specmaskfoley_tiny", "--synthetic", "1", "--extractors", "synthetic_sync", f"--video-seconds={seconds}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --video-seconds") and "a positive finite number of seconds" in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("seconds", [np.float32(2.5), np.int64(3), Fraction(91, 10)], ids=["float32", "int64", "Fraction"])
def test_video_seconds_takes_any_real_number(seconds: Any) -> None:
    """The finite-number check took int and float alone: numpy scalars and Fractions, which float()
    takes, were refused as not a positive finite number. The span is the decimal written (91/10)."""
    from controlfoley.data.extract import Extraction

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained tokenizer's advice: not what is tested here
        ex = Extraction("specmaskfoley_tiny", extractors=["synthetic_sync"], video_seconds=seconds)
    assert ex.video_span == Fraction(str(float(seconds))) and ex.n_video_frames(10.0) == int(ex.video_span * 10)


def test_the_progress_bar_is_shown_on_a_terminal_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """extract drew its tqdm bar into a log file too (train has --no-progress, generate a bar on
    a terminal only): `extract: 19%|...` lines joined by carriage returns. Not on a terminal, none."""
    from controlfoley.data.extract import extract_main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained tokenizer's advice: not what is tested here
        assert extract_main(["--preset", "specmaskfoley_tiny", "--synthetic", "2", "--out", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    assert "extract:" not in err and "%|" not in err


def test_overwrite_keeps_a_users_own_files_named_like_a_staged_copy(tmp_path: Path) -> None:
    """--overwrite removed every file named NAME.new[.SUFFIX] in the folder (notes.new.txt,
    clip.new.mp4), also in one that never held a dataset: only the staged copies an interrupted
    replacement recorded in progress.json are removed now."""
    from controlfoley.data.extract import _write

    out = tmp_path / "ds"
    out.mkdir()
    mine = ["notes.new.txt", "clip.new.mp4", "README.new"]
    for name in mine:
        (out / name).write_text("mine")
    common = dict(shard_size=1, batch_size=1, source="s", skip_bad=True)
    _write(_stub(), out, _items(["a", "b"]), 2, overwrite=True, **common)
    _write(_stub(), out, _items(["a", "b", "c"]), 3, overwrite=True, **common)
    assert all((out / name).read_text() == "mine" for name in mine)


def test_extraction_and_the_pipeline_count_a_windows_feature_rows_alike() -> None:
    """At 24 kHz, hop 256, 2000 mel frames the window is 512000 / 24000 s, 512 frames at 24 fps.
    Extraction counted 511 (the float 21.333... as its decimal, times 24), the pipeline 512
    (floor(x + 1e-9)): a model trained on 511 rows sampled with 512. Both count the window as the
    fraction it is now."""
    from controlfoley import build_model
    from controlfoley.data.extract import Extraction
    from controlfoley.pipeline import FoleyPipeline

    overrides = dict(mel={"sample_rate": 24000}, n_frames=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained parts, the synthetic stand-in extractors: not what is tested here
        pipe = FoleyPipeline(build_model("specmaskfoley_tiny", **overrides))
        ex = Extraction("specmaskfoley_tiny", extractors=["synthetic_sync"], model_overrides=overrides)
    assert pipe.rows_per_window("sync", 24.0) == ex.n_video_frames(24.0) == 512
    assert pipe.rows_per_window("clip", 8.0) == ex.n_video_frames(8.0) == 170  # 170.67


def test_a_finished_extractions_resume_still_checks_its_settings_and_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume of an extraction killed after its index swap tidied up without checking anything:
    another command's settings were accepted (and told 'tidying done'), and a shard the index lists
    but the disk lacks was reported finished, its record deleted. Both are refused as any resume."""
    from controlfoley.data.extract import _write

    common = dict(shard_size=1, batch_size=1, skip_bad=True)
    for case in ("settings", "shard"):
        out = tmp_path / case
        with monkeypatch.context() as m:
            _kill_close(m, "progress")
            with pytest.raises(_Killed):
                _write(_stub(), out, _items(["a", "b"]), 2, overwrite=False, source="s", **common)
        if case == "settings":
            with pytest.raises(DataError, match="the interrupted extraction had other settings"):
                _write(_stub(), out, _items(["a", "b"]), 2, overwrite=False, resume=True, source="other", **common)
        else:
            (out / ShardIndex.load(out).shards[1].file).unlink()
            with pytest.raises(DataError, match="is missing or changed since it was written"):
                _write(_stub(), out, _items(["a", "b"]), 2, overwrite=False, resume=True, source="s", **common)
        assert (out / "progress.json").exists()  # nothing removed


def test_overwrite_drops_a_staged_copy_no_record_names(tmp_path: Path) -> None:
    """A replacement killed before its first shard leaves skipped.new.tsv and no progress.json (or
    one an older version wrote, without staged_names): a later ShardWriter(overwrite=True) that
    staged the name and wrote nothing installed that stale list at close()."""
    from controlfoley.data.extract import SKIPPED_FILE, _write

    out = tmp_path / "ds"
    _write(_stub(), out, _items(["a"]), 1, overwrite=False, source="s", shard_size=1, batch_size=1)
    (out / "skipped.new.tsv").write_text("STALE\tcannot be read\n")
    writer = ShardWriter(out, shard_size=1, info={"source": "s"}, overwrite=True)
    writer.staged(SKIPPED_FILE)  # this build stages the list, and skips nothing
    writer.add("b", {"tokens": torch.zeros(2, 3, dtype=torch.long)})
    writer.close()
    assert not (out / SKIPPED_FILE).exists() and not (out / "skipped.new.tsv").exists()
