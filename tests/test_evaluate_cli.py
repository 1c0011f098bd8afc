"""`controlfoley evaluate` and `evaluate_against_reference`: generated audio scored against the
original soundtracks, with files paired by name, read from audio or video files, and every bad file
reported on its own line while the others are still scored."""

import json
import math
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from controlfoley.audio.io import load_audio, save_audio
from controlfoley.cli import main as cli_main
from controlfoley.data.synthetic import SyntheticWorld, write_clip_mp4
from controlfoley.errors import ShapeError
from controlfoley.evaluate_cli import pair_files
from controlfoley.evaluation import AudioEmbedding, evaluate_against_reference, reference_pair_metrics
from controlfoley.metrics.onsets import detect_onsets

SR = 22050


@pytest.fixture(scope="module")
def clips():
    world = SyntheticWorld(seed=0)
    return [world.clip(i) for i in world.split("test", 4)]


def _delayed(wav: torch.Tensor, seconds: float) -> torch.Tensor:
    """The same sound, starting `seconds` later (silence in front, same length)."""
    k = round(seconds * SR)
    return torch.cat([wav.new_zeros(k), wav[:-k]])


# -- the API ---------------------------------------------------------------------------------


def test_reference_itself_scores_perfectly(clips):
    refs = [c.audio for c in clips]
    m = evaluate_against_reference(refs, refs, SR)
    assert m["n_clips"] == 4 and m["n_true"] == m["n_pred"] == m["matched_any"] > 0
    assert m["desync_s"] == 0.0 and m["f1_any"] == 1.0 and m["desync_miss_frac"] == 0.0
    assert m["fd"] == pytest.approx(0.0, abs=1e-6)
    assert not any(k.endswith("_cls") or k == "class_accuracy" for k in m)  # no classes to score


def test_a_delay_shows_as_desync_and_misses(clips):
    refs = [torch.as_tensor(c.audio) for c in clips]
    late = [_delayed(r, 0.3) for r in refs]
    m = evaluate_against_reference(late, refs, SR)
    assert m["f1_any"] < 0.3  # 0.3 s is outside the 0.1 s window (a few events are 0.3 s apart)
    # every onset moved by 0.3 s, except where the nearest generated onset is another event's
    assert 0.05 < m["desync_s"] <= 0.3 + 0.01
    within = evaluate_against_reference(late, refs, SR, tolerance=0.35)
    assert within["f1_any"] > 0.8
    assert m["fd"] > 0.0


def test_other_rates_are_scored_at_the_detectors_rate(clips):
    """Audio at 44.1 kHz is resampled to 22.05 kHz first: the detector's windows are counted in
    samples, and at 44.1 kHz they found 17 onsets where a clip has 5."""
    import librosa

    refs = [np.asarray(c.audio) for c in clips]
    at44 = [librosa.resample(r, orig_sr=SR, target_sr=44100) for r in refs]
    direct = evaluate_against_reference(refs, refs, SR)
    resampled = evaluate_against_reference(at44, at44, 44100)
    assert resampled["n_true"] == direct["n_true"] == sum(len(c.events) for c in clips)
    assert resampled["f1_any"] == 1.0
    # a 44.1 kHz original beside 22.05 kHz output: each side at its own rate lines them up
    mixed = evaluate_against_reference(refs, at44, SR, reference_sample_rate=44100)
    assert mixed["n_true"] == direct["n_true"] and mixed["f1_any"] == 1.0 and mixed["desync_s"] < 0.01
    pair = reference_pair_metrics(refs[0], at44[0], SR, reference_sample_rate=44100)
    assert pair["f1_any"] == 1.0
    wrong = evaluate_against_reference(refs, at44, SR)  # one rate for both: the reference read at half speed
    assert wrong["f1_any"] < 0.5


def test_undefined_scores_are_nan_per_pair_and_levels_are_reported(clips):
    silent = np.zeros(SR, np.float32)
    m = reference_pair_metrics(silent, silent, SR)
    assert m["n_true"] == m["n_pred"] == 0
    assert all(math.isnan(m[k]) for k in ("desync_s", "recall_any", "precision_any", "f1_any"))
    loud = torch.as_tensor(clips[0].audio)
    m = reference_pair_metrics(loud * 0.5, loud, SR)
    assert m["reference_dbfs"] - m["generated_dbfs"] == pytest.approx(20 * math.log10(2), abs=1e-3)
    with pytest.warns(UserWarning) as said:  # the silent pair is named, once per side
        pooled = evaluate_against_reference([loud * 0.5, silent], [loud, silent], SR)
    assert [str(w.message).split(";")[0] for w in said] == [
        "1 of 2 references is silent (below -90 dBFS): pair 1", "1 of 2 generated clips is silent (below -90 dBFS): pair 1"
    ]  # fmt: skip
    assert pooled["n_clips"] == 2 and not math.isnan(pooled["desync_s"])  # pooled over onsets: defined
    # levels pool by energy: a silent pair adds none (a mean of dB values sank towards -240 dB)
    assert pooled["reference_dbfs"] - pooled["generated_dbfs"] == pytest.approx(20 * math.log10(2), abs=1e-3)
    assert pooled["reference_dbfs"] == pytest.approx(m["reference_dbfs"] - 10 * math.log10(2), abs=1e-3)
    with pytest.warns(UserWarning) as said:  # every pair silent: said of the whole set, once per side
        nothing = evaluate_against_reference([silent, silent], [silent, silent], SR)  # no onsets anywhere: n/a, not 0
    assert [str(w.message).split(" (")[0] for w in said] == ["the reference audio is silent", "the generated audio is silent"]
    assert all(math.isnan(nothing[k]) for k in ("desync_s", "recall_any", "precision_any", "f1_any"))


def test_pairs_are_cut_to_the_shorter_length(clips):
    ref = torch.as_tensor(clips[1].audio)
    half = ref[: ref.numel() // 2]
    m = reference_pair_metrics(half, ref, SR)
    assert m["n_true"] == len(detect_onsets(half, SR))  # reference onsets past the end are not counted
    assert m["n_true"] > 0 and m["f1_any"] == 1.0


def test_api_names_wrong_input(clips):
    with pytest.raises(ShapeError, match="pair them one to one"):
        evaluate_against_reference([clips[0].audio], [], SR)
    with pytest.raises(ShapeError, match="at least one pair"):
        evaluate_against_reference([], [], SR)
    with pytest.raises(ShapeError, match="sample_rate"):
        reference_pair_metrics(clips[0].audio, clips[0].audio, 0)
    with pytest.raises(ShapeError, match=r"embedding works at 16000 Hz but the comparison runs at 22050 Hz"):
        evaluate_against_reference([c.audio for c in clips], [c.audio for c in clips], SR, embedding=AudioEmbedding(16000))


# -- the command -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(clips, tmp_path_factory):
    """References as MP4 videos; generated files as `generate` writes them (<stem>.wav and an MP4 of
    another soundtrack under the same stem, to show the audio file is the one read)."""
    root = tmp_path_factory.mktemp("evaluate")
    ref, gen = root / "ref", root / "gen"
    ref.mkdir()
    gen.mkdir()
    for name, c in zip(("a", "b", "c"), clips, strict=False):
        write_clip_mp4(c, ref / f"{name}.mp4")
    save_audio(gen / "a.wav", torch.as_tensor(clips[0].audio), SR)  # the original soundtrack: perfect
    write_clip_mp4(clips[3], gen / "a.mp4")  # same stem, other audio: must not be read
    save_audio(gen / "b.wav", _delayed(torch.as_tensor(clips[1].audio), 0.3), SR)  # late by 0.3 s
    return root


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(["evaluate", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_evaluate_folders(folders, capsys):
    out_json = folders / "results.json"
    rc, out, err = _run(capsys, str(folders / "gen"), "--reference", str(folders / "ref"), "--out", str(out_json))
    assert rc == 0, err
    report = json.loads(out_json.read_text())
    rows = {r["file"]: r for r in report["files"]}
    assert set(rows) == {"a", "b"} and all(r["status"] == "ok" for r in rows.values())
    assert rows["a"]["generated"].endswith("a.wav")  # the audio file, not a.mp4
    # a.wav went through 16-bit PCM, the reference through AAC: the onsets still agree
    assert rows["a"]["f1_any"] == 1.0 and rows["a"]["desync_s"] < 0.02
    assert rows["b"]["f1_any"] < 0.5 and rows["b"]["desync_s"] > 0.05
    s = report["summary"]
    assert s["n_clips"] == 2 and s["n_failed"] == 0 and s["n_reference_unused"] == 1  # c.mp4
    assert s["fd"] is not None and s["fd"] > 0
    assert report["settings"] == {"sample_rate": SR, "tolerance_s": 0.1, "max_offset_s": 2.0}
    assert "| a |" in out and "1 reference file(s) had no generated file" in out


def test_an_audio_file_libsndfile_cannot_read_is_read_with_ffmpeg(folders, tmp_path, capsys):
    """A generated file named .mp3 that holds AAC (in an MP4 container here) failed with libsndfile's
    'File does not exist or is not a regular file'; extract already fell back to FFmpeg (a review)."""
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "a.mp3").write_bytes((folders / "ref" / "a.mp4").read_bytes())
    rc, out, err = _run(capsys, str(gen), "--reference", str(folders / "ref"), "--out", str(tmp_path / "r.json"))
    rows = {r["file"]: r for r in json.loads((tmp_path / "r.json").read_text())["files"]}
    assert rc == 0 and rows["a"]["status"] == "ok" and rows["a"]["f1_any"] == 1.0, err


def test_bad_files_are_reported_and_the_rest_scored(folders, tmp_path, capsys):
    gen = tmp_path / "gen"
    gen.mkdir()
    for f in ("a.wav", "b.wav"):
        (gen / f).write_bytes((folders / "gen" / f).read_bytes())
    (gen / "b.flac").write_bytes((folders / "gen" / "b.wav").read_bytes())  # two audio files for 'b'
    (gen / "broken.wav").write_bytes(b"RIFF not really a wav")
    (gen / "ref_missing.wav").write_bytes((folders / "gen" / "a.wav").read_bytes())
    (tmp_path / "ref").mkdir()
    for f in ("a.mp4", "b.mp4"):
        (tmp_path / "ref" / f).write_bytes((folders / "ref" / f).read_bytes())
    (tmp_path / "ref" / "broken.mp4").write_bytes((folders / "ref" / "c.mp4").read_bytes())
    out_json = tmp_path / "r.json"
    rc, out, err = _run(capsys, str(gen), "--reference", str(tmp_path / "ref"), "--out", str(out_json))
    assert rc == 1
    rows = {r["file"]: r for r in json.loads(out_json.read_text())["files"]}
    assert rows["a"]["status"] == "ok"
    assert "several files for 'b'" in rows["b"]["status"] and "keep one" in rows["b"]["status"]
    assert "cannot decode audio file" in rows["broken"]["status"]
    assert "no reference 'ref_missing.*'" in rows["ref_missing"]["status"]
    assert err.count("error: ") == 3


def test_two_single_files_pair_whatever_their_names(folders, capsys):
    rc, out, err = _run(capsys, str(folders / "gen" / "a.wav"), "--reference", str(folders / "ref" / "a.mp4"))
    assert rc == 0, err
    assert "| a | 5.9" in out  # one row, named after the generated file
    rows, unused = pair_files(folders / "gen" / "b.wav", folders / "ref" / "c.mp4")
    assert [(r[0], r[3]) for r in rows] == [("b", None)] and unused == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing_folder", "--reference", "REF"], "GENERATED missing_folder does not exist"),
        (["GEN", "--reference", "REF/a.mp4"], "the same kind"),
        (["GEN", "--reference", "REF", "--out", "REF"], "is a folder; name a file"),
        (["GEN", "--reference", "REF", "--tolerance", "-1"], "a finite --tolerance >= 0"),
        (["GEN", "--reference", "REF", "--tolerance", "nan"], "a finite --tolerance >= 0"),  # NaN compared as "not below 0"
        (["GEN", "--reference", "REF", "--max-offset", "inf"], "a finite --max-offset > 0"),
        (["GEN/a.wav", "--reference", "REF/../results.json"], "not an audio or video file"),
        (["GEN", "--reference", "GEN"], "are the same folder"),
        (["GEN", "--reference", "REF", "--out", "REF/../results.json/r.json"], "is a file, so the results cannot be written under it"),
    ],
)
def test_command_line_errors_exit_2(folders, capsys, args, message):
    (folders / "results.json").touch()
    args = [a.replace("GEN", str(folders / "gen")).replace("REF", str(folders / "ref")) for a in args]
    rc, _, err = _run(capsys, *args)
    assert rc == 2 and message in err


def test_nothing_scored_exits_2(tmp_path, capsys):
    (tmp_path / "gen").mkdir()
    (tmp_path / "ref").mkdir()
    (tmp_path / "gen" / "x.wav").write_bytes(b"junk")
    rc, _, err = _run(capsys, str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"))
    assert rc == 2 and "no generated file could be scored" in err
    (tmp_path / "gen" / "x.wav").unlink()
    rc, _, err = _run(capsys, str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"))
    assert rc == 2 and "no audio or video files in" in err


def test_single_pair_has_no_fd(folders, capsys, tmp_path):
    out_json = tmp_path / "one.json"
    rc, _, err = _run(capsys, str(folders / "gen" / "a.wav"), "--reference", str(folders / "ref" / "a.mp4"), "--out", str(out_json))
    assert rc == 0, err
    fd = json.loads(out_json.read_text())["summary"]["fd"]
    assert fd is None  # NaN (one clip per set) is written as null
    with pytest.warns(UserWarning) as said:
        assert math.isnan(evaluate_against_reference([np.zeros(SR, np.float32)], [np.zeros(SR, np.float32)], SR)["fd"])
    assert all("silent (below -90 dBFS)" in str(w.message) for w in said)


def test_short_and_unequal_pairs_and_audio_containers(folders, tmp_path, capsys):
    """A pair too short for the FD embedding is still scored (and left out of fd, with a note); a
    length mismatch over 0.5 s is scored on the overlap with a warning; .m4a is read through PyAV."""
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    audio = [torch.as_tensor(c.audio) for c in (SyntheticWorld(seed=0).clip(i) for i in SyntheticWorld(seed=0).split("test", 3))]
    save_audio(gen / "a.wav", audio[0], SR)
    save_audio(gen / "b.wav", audio[1][: SR * 2], SR)  # 2 s of a 5.9 s original
    save_audio(gen / "tiny.wav", audio[2][:300], SR)
    (ref / "a.m4a").write_bytes((folders / "ref" / "a.mp4").read_bytes())  # an MP4 under an audio name
    save_audio(ref / "b.wav", audio[1], SR)
    save_audio(ref / "tiny.wav", audio[2][:300], SR)
    out_json = tmp_path / "r.json"
    rc, out, err = _run(capsys, str(gen), "--reference", str(ref), "--out", str(out_json))
    assert rc == 0, err
    report = json.loads(out_json.read_text())
    rows = {r["file"]: r for r in report["files"]}
    assert rows["a"]["f1_any"] == 1.0 and rows["a"]["reference"].endswith("a.m4a")
    assert rows["b"]["seconds"] == pytest.approx(2.0) and rows["b"]["reference_s"] == pytest.approx(audio[1].numel() / SR, abs=1e-3)
    assert "warning: b: generated 2.00 s, reference 5.9" in err and "scored on the first 2.00 s only" in err
    assert rows["tiny"]["status"] == "ok" and "1 pair(s) shorter than" in err
    assert report["summary"]["n_clips"] == 3 and report["summary"]["fd"] is not None  # from a and b


def test_swapped_arguments_near_names_and_subfolders_are_pointed_out(folders, tmp_path, capsys):
    rc, _, err = _run(capsys, str(folders / "ref"), "--reference", str(folders / "gen"))
    assert "are the arguments swapped?" in err  # gen holds <name>.wav beside <name>.mp4, as generate writes
    ref = tmp_path / "ref"
    (ref / "nested").mkdir(parents=True)
    (ref / "A.mp4").write_bytes((folders / "ref" / "a.mp4").read_bytes())
    (ref / "nested" / "b.mp4").write_bytes((folders / "ref" / "b.mp4").read_bytes())
    gen = tmp_path / "gen"
    gen.mkdir()
    for f in ("a.wav", "b.wav"):
        (gen / f).write_bytes((folders / "gen" / f).read_bytes())
    (gen / "take_12.wav").write_bytes((folders / "gen" / "a.wav").read_bytes())  # numbered clips: take_11 is another clip, not a typo
    (ref / "take_11.mp4").write_bytes((folders / "ref" / "a.mp4").read_bytes())
    out_json = tmp_path / "r.json"
    rc, _, err = _run(capsys, str(gen), "--reference", str(ref), "--out", str(out_json))
    assert rc == 2  # nothing could be scored
    rows = {r["file"]: r["status"] for r in json.loads(out_json.read_text())["files"]}
    assert "did you mean 'A'?" in rows["a"] and "(files in subfolders are not read)" in rows["b"]
    assert "no reference 'take_12.*'" in rows["take_12"] and "did you mean" not in rows["take_12"]


def test_json_counts_are_integers_and_levels_are_reported(folders, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    rc, out, err = _run(capsys, str(folders / "gen"), "--reference", str(folders / "ref"), "--out", str(out_json))
    assert rc == 0, err
    summary = json.loads(out_json.read_text())["summary"]
    assert all(isinstance(summary[k], int) for k in ("n_clips", "n_true", "n_pred", "n_files", "n_failed"))
    assert summary["generated_dbfs"] < 0 and summary["reference_dbfs"] < 0
    assert "generated_dbfs" in out and "fd over 2 clips" in err


def test_quiet_generated_audio_gets_a_level_warning(folders, tmp_path, capsys):
    gen = tmp_path / "gen"
    gen.mkdir()
    wav = load_audio(folders / "gen" / "a.wav", SR)
    save_audio(gen / "a.wav", wav * 0.1, SR)  # 20 dB down
    rc, _, err = _run(capsys, str(gen), "--reference", str(folders / "ref"))
    assert rc == 0 and "the generated audio is 20.0 dB quieter than the references" in err


@pytest.mark.parametrize(("n", "layout"), [(2, "stereo"), (6, "5.1"), (8, "7.1")])
def test_multichannel_video_and_wav_read_alike(tmp_path, n, layout):
    """A video's audio track and an audio file are mixed to mono the same way (the mean of the
    channels), so an original scores the same whichever container holds it. 7.1 crashed the process
    (a segfault in PyAV's planar frames of 8+ channels) while the mix was read planar."""
    import av

    from controlfoley.evaluate_cli import _read

    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)
    stereo = np.stack([x * (1.0 - 0.1 * k) for k in range(n)])
    with av.open(str(tmp_path / "s.mkv"), "w") as c:
        stream = c.add_stream("pcm_s16le", rate=SR, layout=layout)
        frame = av.AudioFrame.from_ndarray((stereo.T.reshape(1, -1) * 32767).astype(np.int16), format="s16", layout=layout)
        frame.sample_rate = SR
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    save_audio(tmp_path / "s.wav", torch.from_numpy(stereo), SR)
    from_video, from_file = _read(tmp_path / "s.mkv", SR, "reference"), _read(tmp_path / "s.wav", SR, "reference")
    assert from_video.shape == from_file.shape
    assert torch.allclose(from_video, from_file, atol=2e-4)


def test_files_pair_by_stem_across_unicode_normalisation(tmp_path: Path) -> None:
    from controlfoley.evaluate_cli import pair_files

    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert nfd != nfc
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    (gen / f"{nfd}.wav").write_bytes(b"")  # a macOS-written name
    (ref / f"{nfc}.mp4").write_bytes(b"")
    rows, unused = pair_files(gen, ref)
    assert [(r[2], r[3]) for r in rows] == [(ref / f"{nfc}.mp4", None)] and unused == 0


def test_record_pairing_edges(tmp_path: Path, clips) -> None:
    """Pairing at its edges: a source changed since generation (2 s newer, or a byte longer at the
    recorded time: sources are stamped by size and time, not hashed), two files for one name in a record-paired folder, the same folder reached by
    another path, and two generate-layout folders (not 'swapped')."""
    import os

    from controlfoley.evaluate_cli import _changed_since, _pairs, _Usage
    from controlfoley.generate_cli import _file_stamp, update_record

    src = tmp_path / "a.mp4"
    write_clip_mp4(clips[0], src)
    entry = {"source": str(src), "source_stamp": _file_stamp(src)}
    assert not _changed_since(entry)
    st = src.stat()
    os.utime(src, (st.st_atime, st.st_mtime + 2))
    assert _changed_since(entry)  # newer by 2 s
    data = src.read_bytes()
    src.write_bytes(data + b"\0")
    os.utime(src, (st.st_atime, st.st_mtime))
    assert _changed_since(entry)  # one byte longer at the recorded time
    src.write_bytes(data)
    os.utime(src, (st.st_atime, st.st_mtime))

    gen = tmp_path / "gen"
    gen.mkdir()
    save_audio(gen / "b.wav", torch.as_tensor(clips[0].audio), SR)
    save_audio(gen / "b.flac", torch.as_tensor(clips[0].audio), SR)
    update_record(gen, "b", {"source": str(src)})
    rows, _, _ = _pairs(gen, None)
    assert [(r[0], r[3] is not None and "several files for 'b'" in r[3]) for r in rows] == [("b", True)]
    with pytest.raises(_Usage, match="are the same folder"):
        _pairs(gen, gen / ".." / "gen")
    ref = tmp_path / "ref"
    ref.mkdir()
    for folder in (gen, ref):
        (folder / "b.flac").unlink(missing_ok=True)
        write_clip_mp4(clips[0], folder / "b.mp4")
    save_audio(ref / "b.wav", torch.as_tensor(clips[0].audio), SR)
    assert _pairs(gen, ref)[2] is None  # both in generate's layout: no "arguments swapped?" warning


def test_an_unwritable_out_is_refused_before_scoring(folders, tmp_path, capsys):
    """os.access says yes to root even on /proc: --out /proc/x.json failed only after the scoring.
    The check leaves no file behind."""
    if not Path("/proc").is_dir():
        pytest.skip("needs Linux's /proc")
    rc, out, err = _run(capsys, str(folders / "gen"), "--reference", str(folders / "ref"), "--out", "/proc/x.json")
    assert rc == 2 and "--out /proc/x.json: /proc cannot take new files" in err and "name a file in a folder you can write" in err
    assert "| a |" not in out  # nothing was scored
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    rc, _, err = _run(capsys, str(tmp_path / "missing"), "--reference", str(folders / "ref"), "--out", str(fresh / "sub" / "r.json"))
    assert rc == 2 and "does not exist" in err and list(fresh.iterdir()) == []


def test_a_silent_reference_is_named_not_given_a_level_gap(folders, tmp_path, capsys):
    """A silent reference soundtrack gave "the generated audio is 194.7 dB louder than the references"."""
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    wav = load_audio(folders / "gen" / "a.wav", SR)
    save_audio(gen / "a.wav", wav, SR)
    save_audio(ref / "a.wav", torch.zeros_like(wav), SR)
    rc, _, err = _run(capsys, str(gen), "--reference", str(ref))
    assert rc == 0 and "warning: the reference audio is silent (below -90 dBFS)" in err and "check that the references hold the original soundtracks" in err
    assert "louder" not in err
    rc, _, err = _run(capsys, str(ref), "--reference", str(gen))  # the other way round: the generated side is silent
    assert rc == 0 and "warning: the generated audio is silent (below -90 dBFS)" in err and "quieter" not in err


def test_each_silent_file_is_named_when_only_some_are(clips, tmp_path, capsys):
    """One silent reference among loud ones had no warning (only a silent pooled level was warned
    about): its n/a row was the only sign. Now each side's silent files are named on one line."""
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    for name, c in zip("abc", clips, strict=False):
        wav = torch.as_tensor(c.audio)
        save_audio(gen / f"{name}.wav", torch.zeros_like(wav) if name == "c" else wav, SR)
        save_audio(ref / f"{name}.wav", torch.zeros_like(wav) if name == "b" else wav, SR)
    rc, _, err = _run(capsys, str(gen), "--reference", str(ref))
    assert rc == 0
    said = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(said) == 2, err
    assert said[0].startswith("warning: 1 of 3 references is silent (below -90 dBFS): b; it has no onsets to score against")
    assert said[1].startswith("warning: 1 of 3 generated clips is silent (below -90 dBFS): c; no onsets can be detected in it")


def test_the_summary_pools_onsets_and_says_so(clips, tmp_path, capsys):
    """The summary is a micro average (every file's onsets pooled), as --help now says; a file with no
    generated onsets has precision n/a (null), and adds its counts, not an n/a or a 0, to the summary."""
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    save_audio(gen / "a.wav", torch.as_tensor(clips[0].audio), SR)  # its own soundtrack: every onset found
    save_audio(gen / "b.wav", torch.zeros_like(torch.as_tensor(clips[1].audio)), SR)  # nothing generated
    for name, c in zip("ab", clips, strict=False):
        save_audio(ref / f"{name}.wav", torch.as_tensor(c.audio), SR)
    out_json = tmp_path / "scores.json"
    rc, _, err = _run(capsys, str(gen), "--reference", str(ref), "--out", str(out_json))
    assert rc == 0, err
    report = json.loads(out_json.read_text())
    a, b = sorted(report["files"], key=lambda r: r["file"])
    assert b["n_pred"] == 0 and b["precision_any"] is None and b["recall_any"] == 0.0 and b["f1_any"] == 0.0
    assert a["precision_any"] == a["recall_any"] == 1.0 and a["n_true"] != b["n_true"]  # 2 and 5 onsets
    s, tp = report["summary"], a["matched_any"] + b["matched_any"]
    assert s["precision_any"] == pytest.approx(tp / (a["n_pred"] + b["n_pred"])) == 1.0
    assert s["recall_any"] == pytest.approx(tp / (a["n_true"] + b["n_true"]))  # 2 / 7, not the files' mean 0.5
    assert s["f1_any"] == pytest.approx(2 * tp / (a["n_pred"] + b["n_pred"] + a["n_true"] + b["n_true"]))
    assert s["desync_s"] == pytest.approx((a["desync_sum_s"] + b["desync_sum_s"]) / (a["n_true"] + b["n_true"]))
    with pytest.raises(SystemExit):
        cli_main(["evaluate", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    assert "The summary pools the onsets of all files (a micro average" in helped and "not the mean of the file rows" in helped
    assert "precision without generated onsets" in helped


def test_silence_warnings_name_a_few_and_count_the_rest():
    from controlfoley.evaluation import silence_warnings

    loud, quiet = {"reference_dbfs": -20.0, "generated_dbfs": -20.0}, {"reference_dbfs": -240.0, "generated_dbfs": -20.0}
    names = [f"clip{i}" for i in range(9)]
    said = silence_warnings([loud, *[quiet] * 8], names)
    assert said == [
        "8 of 9 references are silent (below -90 dBFS): clip1, clip2, clip3, clip4, clip5 and 3 more; they have no onsets to score "
        "against, so their desync and recall are n/a and the generated onsets beside them count against precision_any; "
        "check that they hold the original soundtracks"
    ]  # fmt: skip
    assert silence_warnings([loud] * 3, names[:3]) == []
    assert silence_warnings([{"reference_dbfs": math.nan, "generated_dbfs": math.nan}], ["empty"]) == []  # an empty pair: no level
