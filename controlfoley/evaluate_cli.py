"""`controlfoley evaluate`: score generated foley against the original soundtracks.

    controlfoley evaluate GENERATED --reference REFERENCE [--out RESULTS.json]
        [--sample-rate 22050] [--tolerance 0.1] [--max-offset 2.0]

GENERATED and REFERENCE are folders (or two single files). Files pair up by name without suffix:
`controlfoley generate clips/*.mp4 --out gen` writes `gen/<stem>.wav` and `gen/<stem>.mp4`, so
`controlfoley evaluate gen --reference clips` scores every generated clip against the audio track
of the video it was made for. Audio files (.wav .flac .ogg .mp3 ...) are read with soundfile,
video files (.mp4 .mov .mkv .webm ...) and .m4a / .aac / .opus through their first audio track
(PyAV); where a folder holds both for one stem (as `generate` writes them), the audio file is read.
A pair whose lengths differ by more than 0.5 s is scored on the overlap, with a warning line.

What is measured (`controlfoley.evaluation.evaluate_against_reference`; each pair cut to its shorter
length): onsets are detected in both waveforms and the reference's stand for the true events:
- `desync_s`: per reference onset, the distance to the nearest generated onset, capped at 2 s, averaged
  (the DeSync analogue of the paper's Table 1, measured on the audio instead of by Synchformer);
- `precision_any` / `recall_any` / `f1_any`: onsets matched one-to-one within `--tolerance` seconds;
- `fd`: the Frechet distance between the generated and reference sets on the fixed `AudioEmbedding`
  (needs two pairs or more). It is not FD_PaSST: the numbers compare runs of this command, not papers.

Output: a markdown table per file and a summary table on stdout; `--out FILE.json` also writes both
(written atomically; NaN as null). A file that cannot be read, or a generated file with no
reference, is reported on its own line and the others are still scored. Exit code: 0 when every
generated file was scored, 1 when any was not, 2 for a bad command line (an unwritable --out
included, checked before any file is read), or nothing to score.
"""

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controlfoley import _media

__all__ = ["evaluate_main", "pair_files", "AUDIO_SUFFIXES", "VIDEO_SUFFIXES"]

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff"})  # read with soundfile
# read through their first audio track with PyAV: videos, and audio containers libsndfile cannot open
VIDEO_SUFFIXES = _media.VIDEO_SUFFIXES | {".m4a", ".aac", ".opus"}
MIN_RATE = 16000  # the evaluation mel's fmax is 8 kHz
LENGTH_WARN_S = 0.5  # a pair whose lengths differ by more is scored on the overlap, with a warning
_SUMMARY_COLUMNS = ("n_clips", "desync_s", "desync_miss_frac", "precision_any", "recall_any", "f1_any", "fd", "n_true", "n_pred")
_FILE_COLUMNS = ("file", "seconds", "n_true", "n_pred", "desync_s", "f1_any", "status")


class _Usage(Exception):
    """A bad command line or nothing to score: exit code 2."""


def _media_files(folder: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """stem -> file to read, and stem -> why it cannot be paired (two audio files for one stem, ...)."""
    by_stem: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in AUDIO_SUFFIXES | VIDEO_SUFFIXES:
            by_stem.setdefault(f.stem, []).append(f)
    files, problems = {}, {}
    for stem, found in by_stem.items():
        audio = [f for f in found if f.suffix.lower() in AUDIO_SUFFIXES]
        pick = audio or found  # generate writes <stem>.wav beside <stem>.mp4: the audio is the same
        if len(pick) > 1:
            problems[stem] = f"several files for '{stem}' in {folder}: {', '.join(f.name for f in pick)}; keep one"
        else:
            files[stem] = pick[0]
    return files, problems


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
    generated, reference = _side(generated, "GENERATED"), _side(reference, "--reference")
    if generated.resolve() == reference.resolve():
        raise _Usage(f"GENERATED and --reference are the same {'file' if generated.is_file() else 'folder'} ({generated}); "
                     "give the folder of the original videos or soundtracks as --reference")
    if generated.is_file() != reference.is_file():
        raise _Usage("give two folders, or two files: GENERATED and --reference must be the same kind")
    if generated.is_file():
        return [(generated.stem, generated, reference, None)], 0
    gen, gen_problems = _media_files(generated)
    ref, ref_problems = _media_files(reference)
    if not gen and not gen_problems:
        raise _Usage(f"no audio or video files in {generated}")
    rows: list[tuple[str, Path, Path | None, str | None]] = []
    for stem in sorted(gen.keys() | gen_problems.keys()):
        if stem in gen_problems:
            rows.append((stem, generated / stem, None, gen_problems[stem]))
        elif stem in ref_problems:
            rows.append((stem, gen[stem], None, ref_problems[stem]))
        elif stem not in ref:
            rows.append((stem, gen[stem], None, f"no reference '{stem}.*' in {reference}"))
        else:
            rows.append((stem, gen[stem], ref[stem], None))
    unused = len((ref.keys() | ref_problems.keys()) - gen.keys() - gen_problems.keys())
    return rows, unused


def _read(path: Path, sample_rate: int) -> Any:
    from controlfoley.audio.io import load_audio
    from controlfoley.video import read_audio_track

    if path.suffix.lower() in AUDIO_SUFFIXES:
        return load_audio(path, sample_rate)
    return read_audio_track(path, sample_rate)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="controlfoley evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generated", type=Path, metavar="GENERATED", help="folder of generated audio or video files (or one file)")
    p.add_argument("--reference", required=True, type=Path, help="folder of the original videos or audio files (or one file)")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--sample-rate", type=int, default=22050, help="rate both sides are resampled to (default 22050, the model's)")
    p.add_argument("--tolerance", type=float, default=None, help="onset match window in seconds (default 0.1)")
    p.add_argument("--max-offset", type=float, default=None, help="cap of the per-onset distance in seconds (default 2.0)")
    return p


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def evaluate_main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    from controlfoley._io import atomic_write_text, check_writable_folder
    from controlfoley.errors import ControlFoleyError, one_line
    from controlfoley.evaluation import AudioEmbedding, format_table, frechet_distance, pool_reference_metrics, reference_pair_metrics
    from controlfoley.metrics.scores import MAX_OFFSET_S, TOLERANCE_S

    tolerance = TOLERANCE_S if args.tolerance is None else args.tolerance
    max_offset = MAX_OFFSET_S if args.max_offset is None else args.max_offset
    try:
        if tolerance < 0 or max_offset <= 0:
            raise _Usage(f"need --tolerance >= 0 and --max-offset > 0; got {tolerance} and {max_offset}")
        if args.sample_rate < MIN_RATE:
            raise _Usage(f"--sample-rate must be at least {MIN_RATE} (the evaluation's mel reaches 8 kHz), got {args.sample_rate}")
        if args.out is not None and args.out.is_dir():
            raise _Usage(f"--out {args.out} is a folder; name a file, e.g. {args.out / 'results.json'}")
        if args.out is not None:
            check_writable_folder(args.out.parent.resolve(), "--out")
        embedding = AudioEmbedding(args.sample_rate)
        rows, unused = pair_files(args.generated, args.reference)
    except (_Usage, ControlFoleyError) as e:  # ControlFoleyError: an unwritable --out folder
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    files: list[dict[str, Any]] = []
    scored: list[tuple[Any, Any]] = []
    per_pair: list[dict[str, float]] = []
    for name, gen_path, ref_path, problem in tqdm(rows, desc="evaluate", unit="file", disable=None):
        row: dict[str, Any] = {"file": name, "generated": str(gen_path), "reference": None if ref_path is None else str(ref_path)}
        try:
            if problem is not None:
                raise ControlFoleyError(problem)
            assert ref_path is not None
            g, r = _read(gen_path, args.sample_rate), _read(ref_path, args.sample_rate)
            sr, g_len, r_len = args.sample_rate, g.shape[-1], r.shape[-1]
            n = min(g_len, r_len)
            if abs(g_len - r_len) > LENGTH_WARN_S * sr:
                tqdm.write(
                    f"warning: {name}: generated {g_len / sr:.2f} s, reference {r_len / sr:.2f} s; scored on the first {n / sr:.2f} s only",
                    file=sys.stderr,
                )
            g, r = g[:n], r[:n]
            metrics = reference_pair_metrics(g, r, sr, tolerance, max_offset)
            row.update(seconds=n / sr, generated_s=g_len / sr, reference_s=r_len / sr, **metrics, status="ok")
            scored.append((g, r))
            per_pair.append(metrics)
        except (ControlFoleyError, OSError, ValueError) as e:
            row["status"] = f"error: {one_line(e)}"
            tqdm.write(f"error: {name}: {one_line(e)}", file=sys.stderr)
        files.append(row)

    print(format_table(files, _FILE_COLUMNS))
    summary: dict[str, Any] = {"n_files": len(files), "n_failed": len(files) - len(scored), "n_reference_unused": unused}
    if scored:
        fd = math.nan
        # the embedding's mel needs a few hundred samples; shorter pairs are scored but left out of FD
        long_enough = [(g, r) for g, r in scored if g.shape[-1] >= embedding.mel.min_samples]
        if len(long_enough) < len(scored):
            print(f"note: {len(scored) - len(long_enough)} pair(s) shorter than {embedding.mel.min_samples} samples are left out of fd", file=sys.stderr)
        if len(long_enough) >= 2:  # a covariance needs two clips per set
            fd = frechet_distance(embedding([g for g, _ in long_enough]), embedding([r for _, r in long_enough]))
        pooled = {**pool_reference_metrics(per_pair), "fd": fd}
        summary.update(pooled)
        print()
        print(format_table([pooled], _SUMMARY_COLUMNS))
    if unused:
        print(f"\n{unused} reference file(s) had no generated file; they were not scored.")
    if args.out is not None:
        settings = {"sample_rate": args.sample_rate, "tolerance_s": tolerance, "max_offset_s": max_offset}
        report = {"settings": settings, "summary": summary, "files": files}
        try:
            atomic_write_text(args.out, json.dumps(_json_safe(report), indent=2) + "\n")
        except OSError as e:
            print(f"error: cannot write {args.out}: {one_line(e)}; choose a writable path", file=sys.stderr)
            return 2
        print(f"wrote {args.out}")
    if not scored:
        print("error: no generated file could be scored (see the lines above)", file=sys.stderr)
        return 2
    return 0 if len(scored) == len(files) else 1
