"""`controlfoley evaluate`: score generated foley against the original soundtracks.

    controlfoley evaluate GENERATED [--reference REFERENCE] [--out RESULTS.json]
        [--tolerance 0.1] [--max-offset 2.0]

Without --reference, GENERATED is a folder `controlfoley generate` wrote: its `generate.json`
names the video each output was made from, and each is scored against that video's audio track
(two inputs with one name, written as `<stem>` and `<stem>-2`, each against its own source).
With --reference, GENERATED and REFERENCE are folders (or two single files) whose files pair up by
name without suffix: `controlfoley generate clips/ --out gen` writes `gen/<stem>.wav` and
`gen/<stem>.mp4`, so `controlfoley evaluate gen --reference clips` scores every generated clip
against the audio track of the video of the same name in `clips`. Only the files directly in each
folder are read (not subfolders).
Audio files (.wav .flac .ogg .mp3 ...) are read with soundfile; video files (.mp4 .mov .mkv .webm
...) and .m4a / .aac / .opus through their first audio track (PyAV). Where a folder holds both an
audio and a video file for one stem (as `generate` writes them), the audio file is read. Both sides
are mixed to mono (the mean of the channels) and resampled to 22.05 kHz, the rate the onset
detector and the embedding are tuned for; each pair is cut to its shorter length, with a warning
when the lengths differ by more than 0.5 s.

What is measured (`controlfoley.evaluation.evaluate_against_reference`): onsets are detected in both
waveforms and the reference's stand for the true events:
- `desync_s`: per reference onset, the distance to the nearest generated onset, capped at 2 s,
  averaged over all reference onsets of all files (the DeSync analogue of the paper's Table 1,
  measured on the audio instead of by Synchformer); `desync_miss_frac`: the share of reference
  onsets with no generated onset within the cap;
- `precision_any` / `recall_any` / `f1_any`: onsets matched one-to-one within `--tolerance` seconds;
- `fd`: the Frechet distance between the generated and reference sets on the fixed `AudioEmbedding`
  (two pairs or more; with fewer clips than its 48 dimensions it is a rough number). It is not
  FD_PaSST: compare runs of this command with each other, not with papers;
- `generated_dbfs` / `reference_dbfs`: RMS levels. The scores depend on level, as FAD does: onsets
  quieter than -45 dBFS are not detected and the embedding reads log-mel levels. A mean level
  difference over 10 dB gets a warning, and a silent side (below -90 dBFS) a warning naming it, and
  naming each silent file (the first five, then a count) when only some are.
The summary pools the onsets of all files (a micro average: counts summed, then the ratios), so
`precision_any` is all matched onsets / all generated onsets and a file with more onsets weighs
more; it is not the mean of the file rows. A score with nothing to measure prints "n/a" (JSON: null),
per file and pooled, never 0: precision without generated onsets; desync and recall without
reference onsets; f1 without either. A file's n/a adds its counts, not an n/a, to the summary, which
is n/a only where no file had anything to measure. The pooled levels are those of the pooled energy
(a silent file does not drag them to -240 dB).

Output: a markdown table per file and a summary table on stdout; `--out FILE.json` also writes both
(written atomically; NaN as null, counts as integers). A file that cannot be read, or a generated
file with no reference, is reported on its own line and the others are still scored. Without
--reference, an output whose recorded source has no soundtrack (a silent video, an animated GIF:
generate makes foley for them) has nothing to be scored against: it is listed as skipped
(`n_skipped`), not failed. Exit code: 0 when every generated file was scored or skipped, 1 when any
failed, 2 for a bad command line (an unwritable --out included, checked before any file is read)
or nothing to score.
"""

import argparse
import difflib
import json
import math
import re
import sys
import tempfile
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from controlfoley import _media

__all__ = ["evaluate_main", "pair_files", "AUDIO_SUFFIXES", "VIDEO_SUFFIXES"]

AUDIO_SUFFIXES = _media.SOUNDFILE_SUFFIXES  # read with soundfile
# read through their first audio track with PyAV: videos, and audio containers libsndfile cannot open
VIDEO_SUFFIXES = _media.VIDEO_SUFFIXES | _media.FFMPEG_AUDIO_SUFFIXES
LENGTH_WARN_S = 0.5  # a pair whose lengths differ by more is scored on the overlap, with a warning
LEVEL_WARN_DB = 10.0  # mean levels further apart than this get a warning
_SUMMARY_COLUMNS = ("n_clips", "desync_s", "desync_miss_frac", "precision_any", "recall_any", "f1_any", "fd", "n_true", "n_pred", "generated_dbfs", "reference_dbfs")
_FILE_COLUMNS = ("file", "seconds", "n_true", "n_pred", "desync_s", "f1_any", "generated_dbfs", "reference_dbfs", "status")
_COUNTS = ("n_clips", "n_true", "n_pred", "matched_any", "n_desync_miss", "n_files", "n_failed", "n_skipped", "n_reference_unused")


class _Usage(Exception):
    """A bad command line or nothing to score: exit code 2."""


class _Folder:
    """The media files directly in a folder, by stem (names compared as written, and NFC-normalised)."""

    def __init__(self, folder: Path, record: Mapping[str, Any] | None = None) -> None:
        """`record`: the folder's generate.json entries (read_manifest), which name each output's
        audio file: among several for a stem (a re-run with another --format leaves the old one),
        that is the one."""
        recorded = {unicodedata.normalize("NFC", stem): e.get("audio") for stem, e in (record or {}).items()}
        by_stem: dict[str, list[Path]] = {}
        for f in sorted(folder.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in AUDIO_SUFFIXES | VIDEO_SUFFIXES:
                by_stem.setdefault(unicodedata.normalize("NFC", f.stem), []).append(f)
        self.folder = folder
        self.files: dict[str, Path] = {}
        self.problems: dict[str, str] = {}
        self.both = 0  # stems with an audio file and a video file: the layout `generate` writes
        for stem, found in by_stem.items():
            audio = [f for f in found if f.suffix.lower() in AUDIO_SUFFIXES]
            self.both += bool(audio) and len(audio) < len(found)
            pick = audio or found  # generate writes <stem>.wav beside <stem>.mp4: the audio is the same
            if len(pick) > 1 and recorded.get(stem) in {f.name for f in pick}:
                pick = [f for f in pick if f.name == recorded[stem]]
            if len(pick) > 1:
                self.problems[stem] = f"several files for '{stem}' in {folder}: {', '.join(f.name for f in pick)}; keep one"
            else:
                self.files[stem] = pick[0]
        self.has_subfolders = any(f.is_dir() and not f.name.startswith(".") for f in folder.iterdir())

    def stems(self) -> set[str]:
        return self.files.keys() | self.problems.keys()

    def missing(self, stem: str) -> str:
        """Why `stem` has no file here, with the nearest names and where files were not looked for."""
        numbered = lambda s: re.sub(r"\d+", "#", s)  # noqa: E731  clip_0001 and clip_0002: other clips, not typos of each other
        near = [s for s in difflib.get_close_matches(stem, sorted(self.stems()), n=3, cutoff=0.8) if numbered(s) != numbered(stem)][:1]
        near = [s for s in sorted(self.stems()) if s.casefold() == stem.casefold()] or near
        hint = f"; did you mean '{near[0]}'?" if near else ""
        sub = " (files in subfolders are not read)" if self.has_subfolders else ""
        return f"no reference '{stem}.*' in {self.folder}{sub}{hint}"


def _side(path: Path, flag: str) -> Path:
    if not path.exists():
        raise _Usage(f"{flag} {path} does not exist")
    if path.is_file() and path.suffix.lower() not in AUDIO_SUFFIXES | VIDEO_SUFFIXES:
        known = " ".join(sorted(AUDIO_SUFFIXES | VIDEO_SUFFIXES))
        raise _Usage(f"{flag} {path} is not an audio or video file (known suffixes: {known})")
    return path


def pair_files(generated: Path, reference: Path) -> tuple[list[tuple[str, Path, Path | None, str | None]], int]:
    """(name, generated file, reference file or None, problem or None) per generated clip, and the
    number of reference clips nothing was generated for. Two single files pair whatever their names."""
    rows, unused, _ = _pairs(generated, reference)
    return rows, unused


class _NoSoundtrack(str):
    """A pair's problem that is not a failure: its source has no soundtrack to score against (a
    silent video or an animated GIF that `generate` made foley for). Listed as skipped; it does not
    count in `n_failed` nor make the exit code 1."""


def _has_soundtrack(source: Path) -> bool:
    """Whether `source` holds an audio track (a GIF never does; a file that cannot be probed is
    left to the read, which names its problem)."""
    from controlfoley.errors import MediaError
    from controlfoley.video import probe

    if source.suffix.lower() == ".gif":
        return False
    try:
        return probe(source).has_audio
    except (MediaError, OSError):
        return True


def _pairs_from_record(generated: Path) -> tuple[list[tuple[str, Path, Path | None, str | None]], int, str | None]:
    """Pairs from GENERATED/generate.json: each output with the video `generate` made it from (one
    without a soundtrack is skipped: `_NoSoundtrack`)."""
    from controlfoley.errors import MediaError
    from controlfoley.generate_cli import MANIFEST, read_manifest

    generated = _side(generated, "GENERATED")
    if generated.is_file():
        raise _Usage(f"GENERATED {generated} is a file: give --reference, the original it is scored against")
    try:
        record = read_manifest(generated)
    except MediaError as e:
        raise _Usage(f"{e}; or give --reference") from None
    gen = _Folder(generated, record)
    if not record:
        raise _Usage(
            f"{generated} has no {MANIFEST}, the record `controlfoley generate` writes of each output's source: "
            "give --reference, the folder of the original videos or soundtracks"
        )
    if not gen.stems():
        raise _Usage(f"no audio or video files in {generated}")
    rows: list[tuple[str, Path, Path | None, str | None]] = []
    for stem in sorted(gen.stems()):
        entry = record.get(stem)
        if stem in gen.problems:
            rows.append((stem, generated / stem, None, gen.problems[stem]))
        elif entry is None:
            rows.append((stem, gen.files[stem], None, f"{stem} is not in {generated / MANIFEST}; score it with --reference"))
        elif "problem" in entry:
            fix = "" if entry.get("pending") else "; repair it, or score the file with --reference"  # a pending entry's problem says how to finish it
            rows.append((stem, gen.files[stem], None, f"{entry['problem']}{fix}"))
        elif Path(entry["source"]).is_dir():
            rows.append((stem, gen.files[stem], None, f"its source {entry['source']} (from {MANIFEST}) is a folder, not a video; repair the entry"))
        elif not Path(entry["source"]).is_file():
            rows.append((stem, gen.files[stem], None, f"its source {entry['source']} (from {MANIFEST}) is gone; score it with --reference"))
        elif not _has_soundtrack(Path(entry["source"])):
            rows.append((stem, gen.files[stem], None, _NoSoundtrack(f"its source {entry['source']} has no soundtrack to score against (a silent video or GIF)")))
        else:
            rows.append((stem, gen.files[stem], Path(entry["source"]), None))
            if _changed_since(entry):
                print(f"warning: {stem}: its source {entry['source']} changed since it was generated (size or time); the scores compare against the file as it is now", file=sys.stderr)
    return rows, 0, None


def _changed_since(entry: dict[str, Any]) -> bool:
    """Whether the source's size or modification time differ from what generate recorded."""
    stamp = entry.get("source_stamp")
    if not isinstance(stamp, dict):
        return False
    st = Path(entry["source"]).stat()
    return stamp.get("bytes") != st.st_size or (isinstance(stamp.get("mtime"), (int, float)) and abs(stamp["mtime"] - st.st_mtime) > 1e-2)


def _pairs(generated: Path, reference: Path | None) -> tuple[list[tuple[str, Path, Path | None, str | None]], int, str | None]:
    if reference is None:
        return _pairs_from_record(generated)
    generated, reference = _side(generated, "GENERATED"), _side(reference, "--reference")
    if generated.resolve() == reference.resolve():
        raise _Usage(
            f"GENERATED and --reference are the same {'file' if generated.is_file() else 'folder'} ({generated}); "
            "give the folder of the original videos or soundtracks as --reference"
        )
    if generated.is_file() != reference.is_file():
        raise _Usage("give two folders, or two files: GENERATED and --reference must be the same kind")
    if generated.is_file():
        return [(generated.stem, generated, reference, None)], 0, None
    from controlfoley.generate_cli import read_manifest_or_empty

    record = read_manifest_or_empty(generated)  # with --reference the record only adds hints, and picks among a stem's audio files
    gen, ref = _Folder(generated, record), _Folder(reference)
    if not gen.stems():
        sub = "; files in subfolders are not read" if gen.has_subfolders else ""
        raise _Usage(f"no audio or video files in {generated}{sub}")
    rows: list[tuple[str, Path, Path | None, str | None]] = []
    for stem in sorted(gen.stems()):
        if stem in gen.problems:
            rows.append((stem, generated / stem, None, gen.problems[stem]))
        elif stem in ref.problems:
            rows.append((stem, gen.files[stem], None, ref.problems[stem]))
        elif stem not in ref.files:
            rows.append((stem, gen.files[stem], None, ref.missing(stem) + _record_hint(record, stem)))
        else:
            rows.append((stem, gen.files[stem], ref.files[stem], None))
    unused = len(ref.stems() - gen.stems())
    swapped = None
    if ref.both and not gen.both:
        swapped = (
            f"{reference} looks like `controlfoley generate` output (<name>.wav beside <name>.mp4) and {generated} does not: "
            "are the arguments swapped? (controlfoley evaluate GENERATED --reference ORIGINALS)"
        )
    return rows, unused, swapped




def _record_hint(record: dict[str, dict[str, Any]], stem: str) -> str:
    """For an output `generate` recorded: where it came from, and how to pair it by that."""
    from controlfoley.generate_cli import MANIFEST

    entry = record.get(stem)
    if entry is None or not entry.get("source"):
        return ""
    return f" ({stem} was made from {entry['source']}; without --reference, {MANIFEST} pairs each output with its own source)"


def _read(path: Path, sample_rate: int, side: str) -> Any:
    from controlfoley.errors import MediaError, one_line
    from controlfoley.video import read_audio_file

    try:
        wav = read_audio_file(path, sample_rate)  # soundfile's kinds with libsndfile (FFmpeg where it refuses), the rest with FFmpeg
    except MediaError as e:
        raise MediaError(f"{side}: {one_line(e)}") from e
    if not bool(wav.isfinite().all()):
        raise MediaError(f"{side} {path} holds NaN or Inf samples; re-export it")
    return wav


def _check_out(out: Path) -> None:
    """--out names a file whose folder exists or can be made (nothing is created before the run)."""
    if out.is_dir():
        raise _Usage(f"--out {out} is a folder; name a file, e.g. {out / 'results.json'}")
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise _Usage(f"--out {out}: {parent} is a file, so the results cannot be written under it; name another file")
    try:  # a nameless file, gone when closed: the check leaves nothing behind (os.access says yes to root, even on /proc)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise _Usage(f"--out {out}: {parent} cannot take new files ({e.strerror or e}); name a file in a folder you can write") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="controlfoley evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generated", type=Path, metavar="GENERATED", help="folder of generated audio or video files (or one file)")
    p.add_argument(
        "--reference", type=Path, default=None,
        help="folder of the original videos or audio files (or one file); default: the sources GENERATED/generate.json names",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--tolerance", type=float, default=None, help="onset match window in seconds (default 0.1)")
    p.add_argument("--max-offset", type=float, default=None, help="cap of the per-onset distance in seconds (default 2.0)")
    return p


def _json_safe(x: Any, key: str = "") -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, float) and key in _COUNTS:
        return int(x)
    if isinstance(x, dict):
        return {k: _json_safe(v, k) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def evaluate_main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    from controlfoley._io import atomic_write_text
    from controlfoley.errors import ControlFoleyError, one_line
    from controlfoley.evaluation import (
        EVAL_RATE, SILENT_DBFS, AudioEmbedding, format_table, pool_reference_metrics, reference_fd, reference_pair_metrics, silence_warnings,
    )  # fmt: skip
    from controlfoley.metrics.scores import MAX_OFFSET_S, TOLERANCE_S

    tolerance = TOLERANCE_S if args.tolerance is None else args.tolerance
    max_offset = MAX_OFFSET_S if args.max_offset is None else args.max_offset
    try:
        if not (math.isfinite(tolerance) and tolerance >= 0 and math.isfinite(max_offset) and max_offset > 0):  # NaN compares False
            raise _Usage(f"need a finite --tolerance >= 0 and a finite --max-offset > 0; got {tolerance} and {max_offset}")
        if args.out is not None:
            _check_out(args.out)
        rows, unused, swapped = _pairs(args.generated, args.reference)
    except _Usage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if swapped:
        print(f"warning: {swapped}", file=sys.stderr)

    from tqdm import tqdm

    sr = EVAL_RATE
    files: list[dict[str, Any]] = []
    scored: list[tuple[Any, Any]] = []
    per_pair: list[dict[str, float]] = []
    scored_names: list[str] = []
    skipped = 0
    for name, gen_path, ref_path, problem in tqdm(rows, desc="evaluate", unit="file", disable=None):
        row: dict[str, Any] = {"file": name, "generated": str(gen_path), "reference": None if ref_path is None else str(ref_path)}
        if isinstance(problem, _NoSoundtrack):  # nothing to compare with: not a failure
            row["status"] = f"skipped: {problem}"
            tqdm.write(f"note: {name}: skipped: {problem}", file=sys.stderr)
            files.append(row)
            skipped += 1
            continue
        try:
            if problem is not None:
                raise ControlFoleyError(problem)
            assert ref_path is not None
            g, r = _read(gen_path, sr, "generated file"), _read(ref_path, sr, "reference")
            g_len, r_len = g.shape[-1], r.shape[-1]
            n = min(g_len, r_len)
            if abs(g_len - r_len) > LENGTH_WARN_S * sr:
                tqdm.write(f"warning: {name}: generated {g_len / sr:.2f} s, reference {r_len / sr:.2f} s; scored on the first {n / sr:.2f} s only", file=sys.stderr)
            g, r = g[:n].numpy(), r[:n].numpy()
            metrics = reference_pair_metrics(g, r, sr, tolerance, max_offset)
            row.update(seconds=n / sr, generated_s=g_len / sr, reference_s=r_len / sr, **metrics, status="ok")
            scored.append((g, r))
            per_pair.append(metrics)
            scored_names.append(name)
        except (ControlFoleyError, OSError, ValueError) as e:
            row["status"] = f"error: {one_line(e)}"
            tqdm.write(f"error: {name}: {one_line(e)}", file=sys.stderr)
        files.append(row)

    print(format_table(files, _FILE_COLUMNS))
    summary: dict[str, Any] = {"n_files": len(files), "n_failed": len(files) - len(scored) - skipped, "n_skipped": skipped, "n_reference_unused": unused}
    if scored:
        embedding = AudioEmbedding(sr)
        short = sum(min(len(g), len(r)) < embedding.mel.min_samples for g, r in scored)
        n_fd = len(scored) - short
        if short:
            print(f"note: {short} pair(s) shorter than {embedding.mel.min_samples} samples are left out of fd", file=sys.stderr)
        pooled = {**pool_reference_metrics(per_pair), "fd": reference_fd(scored, embedding)}
        summary.update(pooled)
        print()
        print(format_table([pooled], _SUMMARY_COLUMNS))
        for message in silence_warnings(per_pair, scored_names):  # each silent file named: one line per side
            print(f"warning: {message}", file=sys.stderr)
        gap = pooled["reference_dbfs"] - pooled["generated_dbfs"]
        silent_side = pooled["reference_dbfs"] < SILENT_DBFS or pooled["generated_dbfs"] < SILENT_DBFS  # said above
        if not silent_side and abs(gap) > LEVEL_WARN_DB:  # a gap against silence means nothing (NaN compares False)
            print(
                f"warning: the generated audio is {abs(gap):.1f} dB {'quieter' if gap > 0 else 'louder'} than the references on average; "
                "the scores depend on level (quiet onsets are not detected, fd reads log-mel levels)",
                file=sys.stderr,
            )
        if 2 <= n_fd < embedding.dim:
            print(f"note: fd over {n_fd} clips (fewer than the embedding's {embedding.dim} dimensions) is a rough number", file=sys.stderr)
    if unused:
        print(f"\n{unused} reference file(s) had no generated file; they were not scored.")
    if args.out is not None:
        settings = {"sample_rate": sr, "tolerance_s": tolerance, "max_offset_s": max_offset}
        report = {"settings": settings, "summary": summary, "files": files}
        try:
            atomic_write_text(args.out, json.dumps(_json_safe(report), indent=2) + "\n")
        except OSError as e:
            print(f"error: cannot write {args.out}: {one_line(e)}; choose a writable path", file=sys.stderr)
            return 2
        print(f"wrote {args.out}")
    if not scored and skipped and skipped == len(files):
        print(
            f"error: nothing to score: all {skipped} output(s) were skipped, their sources have no soundtrack; score them with "
            "--reference FOLDER, the original audio or videos with sound of the same names",
            file=sys.stderr,
        )
        return 2
    if not scored:
        print("error: no generated file could be scored (see the lines above)", file=sys.stderr)
        return 2
    return 0 if len(scored) + skipped == len(files) else 1
