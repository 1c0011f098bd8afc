"""`controlfoley generate`: foley for a list of video files, one bad file never stopping the others.

    controlfoley generate VIDEO_OR_FOLDER... --model PATH_OR_PRESET --out DIR [--prompt TEXT]
        [--negative-prompt TEXT] [--steps 12] [--cfg-scale 3] [--guidance NAME[,ARG=VALUE...]]
        [--guidance-every 1] [--seed 0] [--format wav|flac] [--overlap 0.25] [--join crossfade|decode_once]
        [--extractor KEY=NAME[,ARG=VALUE...]] [--text-encoder NAME[,ARG=VALUE...]]
        [--vocoder NAME[,ARG=VALUE...]] [--device cpu] [--precision auto|fp32|bf16|bf16-weights]
        [--cuda-graph] [--overwrite] [--skip-existing]

Features
- A folder among the inputs stands for the video files directly in it (.mp4 .mov .mkv .webm ... .gif).
- Per video: DIR/<stem>.wav (or .flac) and DIR/<stem>.mp4, the original video stream copied packet
  by packet (re-encoded only where MP4 cannot hold its codec) beside the new AAC audio track. Both
  files are written to temporary names and renamed only when both are complete, so a failure leaves
  no partial file. Two inputs with one stem get `<stem>-2`, ...
- A pair is committed in three steps: its generate.json entry is marked as being written
  ("pending", "writing"), the two files are renamed into place, the entry is completed. A run
  killed (SIGKILL, the out-of-memory killer) in between leaves the mark, whatever mix of old, new and missing
  files it left: `--skip-existing` makes that pair again (without needing `--overwrite`), never
  keeps it, and `controlfoley evaluate` reports the entry as unfinished instead of scoring it. The
  temporary files a killed run left for the outputs a run makes or keeps are removed when it starts,
  never those of a run writing into DIR at the same time: each run holds a hidden run file in DIR
  locked while it lives (`.generate.run-*.lock`, removed when it ends), and a temporary file changed
  after a live run began is left for a later run.
- Ctrl-C and SIGTERM (a scheduler's preemption) stop the run at once, dropping the file in progress
  (its temporary files removed; a signal while a pair is committed waits the milliseconds until it
  is complete and recorded, and a second one there stops at once, leaving the pair's mark), print
  the summary so far and how to go on (the same command with `--skip-existing`), and exit 130 / 143.
- DIR/generate.json records, per output, the video it was made from and the settings that made it
  (model, prompt, steps, CFG scale, guidance, seed, precision, ...), so `controlfoley evaluate DIR`
  scores each output against its own source without `--reference`, repeated stems included. It is
  rewritten atomically after each file, under a lock on DIR (runs writing into one DIR at once keep
  each other's entries), and keeps the entries of earlier runs into the same DIR.
- Before any sampling: the arguments (once, not per file), the device (`--device cuda` needs a
  usable GPU), the vocoder (a trained one needs its weights: `--vocoder hifigan,checkpoint=PATH`),
  and the outputs: one that would replace its own input is refused, and so is one that already
  exists unless `--overwrite` is given (then it is replaced, atomically); last, that `--out` can
  take files.
- A progress bar over files (tqdm, on a terminal); every failure (missing file, no video stream,
  truncated or corrupt file, zero-length video, unsupported codec, an output folder that stops
  taking files mid-run, missing or mis-shaped precomputed features) prints one line `error: FILE: reason` and the run
  goes on; a summary table (file, duration, windows, time, status, written) ends the run.
- Exit code: 0 when every file succeeded, 1 when any failed, 2 for a bad command line, device,
  model, extractor, vocoder, prompt or output folder (nothing generated), 128 + the signal's number
  when stopped by Ctrl-C (130) or SIGTERM (143).
- `--vocoder NAME,...` naming the model's own vocoder keeps the model's settings for it and changes
  only the given ones (`--vocoder griffinlim,n_iter=4` on a tiny preset keeps inverse="pinv");
  another name builds that vocoder from the given settings alone.
- `--extractor clip=clip_openclip,weights=/w/clip.safetensors` replaces one feature extractor;
  values are read as JSON where they parse (numbers, true/false), else as strings; the same for
  `--vocoder hifigan,checkpoint=g.pt,trust_checkpoint=true`.
"""

import argparse
import contextlib
import functools
import hashlib
import logging
import math
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from controlfoley._io import check_writable_folder
from controlfoley.config import parse_spec  # re-exported: it lives beside parse_overrides

__all__ = ["main", "parse_spec", "MANIFEST", "read_manifest", "read_manifest_or_empty", "update_record", "claim_outputs"]

MANIFEST = "generate.json"  # DIR/generate.json: output name -> source video and settings
_MANIFEST_FORMAT = "controlfoley.generate/1"

log = logging.getLogger("controlfoley.generate")

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="controlfoley generate", description="Foley for video files (SpecMaskFoley).")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="input video files (any container/codec FFmpeg decodes), or folders of them")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors or folder) or a preset that ships weights")
    p.add_argument("--out", required=True, type=Path, help="output folder: <name>.wav, <name>.mp4 per video, and generate.json (each output's source and settings)")
    p.add_argument(
        "--prompt", default=None,
        help="text prompt (CLAP role); without it, a rule that needs text samples with its without_text() (video-only CFG for the built-ins)",
    )  # fmt: skip
    p.add_argument("--negative-prompt", default=None, help="text the sampler steers away from")
    p.add_argument("--steps", type=int, default=None, help="MaskGIT steps (default: the model's, 12)")
    p.add_argument(
        "--cfg-scale", type=float, default=None,
        help="final CFG scale (default: the model's, 3); 0 samples unguided, and a negative scale steers away from the conditions",
    )  # fmt: skip
    p.add_argument(
        "--guidance", default=None, metavar="NAME[,ARG=VALUE...]",
        help="a GUIDANCE rule replacing the model's, e.g. cfg_video or cfg,condition=text_video (default: the model's own; the paper's multi-CFG for its presets); "
        "the model's own rule by name keeps its settings, ARG=VALUE on top",
    )  # fmt: skip
    p.add_argument(
        "--guidance-every", type=int, default=1, metavar="N",
        help="run every condition set of the guidance rule at every N-th step only, in between the fully conditioned one alone "
             "(an approximation: with a prompt, multi-CFG at 12 steps, N=3 runs 61%% of the paper model's block arithmetic, 75%% without one; "
             "quality in benchmarks/RESULTS.md). Default 1: the paper's sampler",
    )  # fmt: skip
    p.add_argument(
        "--control-scale", type=float, default=None, metavar="S",
        help="multiply every ControlNet residual by S (default 1: as trained; below 1 the video steers less, 0 the backbone alone)",
    )  # fmt: skip
    p.add_argument(
        "--seed", type=int, default=0,
        help="sampling seed (default: 0); the same seed and settings give the same tokens on the same device and precision "
             "(generate.json records them; the waveform's last bits can vary with the CPU thread count)",
    )  # fmt: skip
    p.add_argument("--format", choices=("wav", "flac"), default="wav")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap for long videos, fraction of a window (default: 0.25)")
    p.add_argument(
        "--join", choices=("crossfade", "decode_once"), default="crossfade",
        help="how windows of a long video meet: crossfade the decoded mels (default) or decode the whole token sequence once",
    )  # fmt: skip
    p.add_argument(
        "--extractor", action="append", default=[], metavar="KEY=NAME[,ARG=VALUE...]",
        help="a video feature extractor replacing the default for KEY (the ones the checkpoint records, else the synthetic world's), "
             "e.g. sync=synchformer_precomputed,root=DIR or clip=clip_openclip,weights=FILE; repeatable",
    )  # fmt: skip
    p.add_argument(
        "--text-encoder", default=None, metavar="NAME[,ARG=VALUE...]",
        help="the CLAP-role text encoder that embeds --prompt, e.g. clap_transformers,folder=DIR (default: the one the checkpoint records "
             "for its training data, else synthetic_clap for the synthetic and tiny presets)",
    )  # fmt: skip
    p.add_argument("--vocoder", default=None, metavar="NAME[,ARG=VALUE...]", help="default: the model's own")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist in --out")
    p.add_argument(
        "--skip-existing", action="store_true",
        help="keep the outputs that --out's generate.json records as made from the same, unchanged video with the same settings "
             "(the model file, prompt, seed, steps, ...), and generate the rest: an interrupted run goes on where it stopped "
             "(a pair it left half-written is made again). An existing output made otherwise is still refused unless --overwrite is given too",
    )  # fmt: skip
    p.add_argument(
        "--precision", choices=("auto", "fp32", "bf16", "bf16-weights"), default="auto",
        help="token sampling precision; auto: bf16 (autocast) on CUDA, fp32 on CPU (always: ask for bf16 on a CPU with AVX-512 bf16, "
             "~1.6x faster at paper size, no gain for the tiny presets; CPUs without bf16 units may be slower); bf16-weights: the sampling parts stored in bf16 and run "
             "natively, the fastest CUDA path with --cuda-graph",
    )  # fmt: skip
    p.add_argument(
        "--batch-size", type=int, default=None, metavar="N",
        help="videos sampled together, window by window (default: 16 on CUDA, 1 with --cuda-graph, 8 elsewhere); each video's output is the one it gets "
             "alone, and a file that fails fails alone",
    )  # fmt: skip
    p.add_argument(
        "--cuda-graph", action="store_true",
        help="(CUDA) capture each window's whole sampling loop as one CUDA graph and replay it for the next windows and files: 3-5x faster token sampling at batch 1 on an H200",
    )  # fmt: skip
    return p


def _check_device(spec: str) -> None:
    """A device this machine has, checked once before the model loads (no traceback from deep in torch)."""
    from controlfoley.model import device_name

    device_name(spec, arg="--device")


def _vocoder_spec(text: str | None) -> dict[str, Any] | None:
    """--vocoder NAME,ARG=VALUE... -> {"name": ..., **kwargs}; a trained vocoder without weights is refused."""
    from controlfoley.audio.vocoders import missing_weights, missing_weights_message

    if not text:
        return None
    name, kwargs = parse_spec(text)
    if arg := missing_weights(name, kwargs):
        raise ValueError(missing_weights_message(name, arg))
    return {"name": name, **kwargs}


def _extractor_specs(items: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    extractors = {}
    for item in items:
        key, sep, spec = item.partition("=")
        if not sep or not key or not key.isidentifier():  # "synchformer_precomputed,root=DIR": extract's form, without the key
            name = item.split(",")[0]
            hint = f"; for the '{name}' extractor give its feature key first, e.g. --extractor sync={item}" if name and "=" not in name else ""
            raise ValueError(
                f"--extractor {item!r}: generate expects KEY=NAME[,ARG=VALUE...] (KEY: the feature it replaces, e.g. sync or clip), "
                f"e.g. clip=clip_openclip,weights=FILE{hint}"
            )
        extractors[key] = parse_spec(spec)
    return extractors


def _check_numbers(args: argparse.Namespace) -> None:
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.guidance_every < 1:
        raise ValueError(f"--guidance-every must be >= 1 (1: the paper's sampler), got {args.guidance_every}")
    if args.cfg_scale is not None and not math.isfinite(args.cfg_scale):
        raise ValueError(f"--cfg-scale must be a finite number, got {args.cfg_scale}")
    if args.control_scale is not None and not math.isfinite(args.control_scale):
        raise ValueError(f"--control-scale must be a finite number (1: the ControlNet as trained), got {args.control_scale}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1 (videos sampled together), got {args.batch_size}")
    if not 0.0 <= args.overlap < 1.0:
        raise ValueError(f"--overlap is a fraction of the window in [0, 1), got {args.overlap}")
    from controlfoley.pipeline_parts import checked_seed

    checked_seed(args.seed, "--seed")  # a ConfigError is a ValueError: reported as the other argument errors
    if args.cuda_graph and not args.device.startswith("cuda"):
        raise ValueError(f"--cuda-graph needs --device cuda (CUDA graphs), got --device {args.device}; drop --cuda-graph on the CPU")


def _build_pipeline(args: argparse.Namespace, extractors: dict[str, Any], vocoder: dict[str, Any] | None) -> Any:
    """The pipeline; a model, extractor or prompt that cannot work fails here, once, before any file."""
    from controlfoley.pipeline import FoleyPipeline

    text_encoder = parse_spec(args.text_encoder) if args.text_encoder else None
    pipe = FoleyPipeline.from_pretrained(
        args.model, extractors=extractors, text_encoder=text_encoder, vocoder=vocoder, map_location=args.device, overlap=args.overlap, join=args.join,
        precision=args.precision, cuda_graph=args.cuda_graph, progress=False,  # the command has its own bar, over files
    )  # fmt: skip
    args.rule = None
    if args.guidance:
        from controlfoley._registry import GUIDANCE

        name, kwargs = parse_spec(args.guidance)
        own = pipe.model.config.guidance
        if own is not None and name == own.name:  # the model's own rule by name: its settings, the given ones on top (as --vocoder)
            kwargs = {**dict(own.kwargs), **kwargs}
        args.rule = GUIDANCE.build(name, **kwargs)  # an unknown rule or argument fails now, named
        if args.rule.needs_text and not args.prompt:
            other = "none,condition=video (unguided, following the video)" if name == "none" else "cfg_video (video-only guidance)"
            raise ValueError(f"--guidance {args.guidance} = {args.rule} needs text: give --prompt, or use --guidance {other}")
    if args.prompt:
        pipe.encode_text(args.prompt)  # a typo in the prompt fails now, not after the first file
    if args.negative_prompt:
        pipe.encode_text(args.negative_prompt)
    return pipe


def read_manifest_or_empty(folder: Path) -> dict[str, dict[str, Any]]:
    """FOLDER/generate.json's entries, or {} when there is none or it cannot be read."""
    from controlfoley.errors import MediaError

    try:
        return read_manifest(folder)
    except MediaError:
        return {}


def _expand_folders(items: Sequence[str]) -> list[str]:
    """A folder among the inputs stands for the video files directly in it (sorted by name), less
    the ones its generate.json records as outputs of an earlier run into it."""
    from controlfoley._media import GENERATE_SUFFIXES, left_out, video_files

    out: list[str] = []
    for item in items:
        if not Path(item).is_dir():
            out.append(item)
            continue
        found = video_files(Path(item))
        others = left_out(Path(item), GENERATE_SUFFIXES | {".json", ".wav", ".flac"}, "video")  # generate.json and the outputs of a run into it: not news
        if others:
            log.warning("%s", others)
        made = {e.get("video") for e in read_manifest_or_empty(Path(item)).values()}
        ours = [f for f in found if f.name in made]
        if ours:
            log.warning("%s: skipping %d video(s) its %s records as generated (%s); give them by name to use them as inputs", item, len(ours), MANIFEST, ", ".join(f.name for f in ours[:3]) + (" ..." if len(ours) > 3 else ""))
            found = [f for f in found if f.name not in made]
        if not found:
            raise ValueError(f"{item} is a folder with no video files in it ({' '.join(sorted(GENERATE_SUFFIXES))}); give video files or a folder of them")
        out += [str(f) for f in found]
    return out


def _outputs(videos: Sequence[str], out: Path, fmt: str) -> list[tuple[Path, Path]]:
    """(audio path, video path) per input. A video that OUT/generate.json records keeps its recorded
    name (a re-run replaces its own outputs); another gets its stem, or -2, -3, ... where the name
    is taken in this run or recorded for another source (runs into one OUT never share a name)."""
    record = read_manifest_or_empty(out)
    recorded_as: dict[str, str] = {}
    for recorded_name, entry in record.items():
        recorded_as.setdefault(entry["source"], recorded_name)
    used: set[str] = set()
    pairs = []
    for v in videos:
        source = str(Path(v).resolve())
        name = recorded_as.get(source)
        if name is None or name in used:  # (skips "a-2" when an input is itself called a-2)
            name = _free_name(Path(v).stem or "video", source, record, lambda n: n in used)
        used.add(name)
        pairs.append((out / f"{name}.{fmt}", out / f"{name}.mp4"))
    return pairs


def _free_name(stem: str, source: str, record: dict[str, dict[str, Any]], blocked: Callable[[str], bool]) -> str:
    """The first of stem, stem-2, stem-3, ... that is not `blocked` and is recorded for no source or
    for this `source`."""
    name, k = stem, 1
    while blocked(name) or record.get(name, {"source": source}).get("source") != source:
        k += 1
        name = f"{stem}-{k}"
    return name


def claim_outputs(out: Path, video: Path, paths: tuple[Path, Path]) -> tuple[Path, Path]:
    """Reserve the planned output name for `video` in OUT/generate.json, under the folder's lock,
    before its outputs are sampled: where a run writing into OUT at the same time recorded that name
    for another source since this run planned it, the next free `<stem>-k` is taken instead (one
    neither recorded for another source nor already on disk). The reservation is an entry with the
    source and "pending": true, completed by `update_record` once the outputs are written (a file
    that fails keeps its name reserved for its source). Returns the (audio, video) paths to write."""
    source = str(video.resolve())
    audio_path, video_path = paths
    with _folder_lock(out):
        record = read_manifest_or_empty(out)
        name = video_path.stem
        taken = record.get(name)
        if taken is not None and taken.get("source") != source:
            on_disk = lambda n: n not in record and ((out / f"{n}{audio_path.suffix}").exists() or (out / f"{n}.mp4").exists())  # noqa: E731
            name = _free_name(video.stem or "video", source, record, on_disk)
            log.warning("%s: its planned output name %s was taken by another run into %s since; writing %s instead", video, video_path.stem, out, name)
        if record.get(name, {}).get("source") != source:
            _write_record(out, name, {"source": source, "pending": True})
    return out / f"{name}{audio_path.suffix}", out / f"{name}.mp4"


def _begin_writing(out: Path, video: Path, paths: tuple[Path, Path]) -> Any:
    """Mark the pair's entry in OUT/generate.json as being written ("pending" and "writing", with the
    two file names), under the folder's lock, just before the pair's renames: from here until
    `_record` completes the entry, the files on disk may be any mix of old, new and missing, and a
    run killed in between leaves the mark (--skip-existing makes the pair again, `evaluate` does not
    score it). Returns the entry it replaced, for `_undo_writing`."""
    entry = {"source": str(video.resolve()), "pending": True, "writing": True, "audio": paths[0].name, "video": paths[1].name}
    with _folder_lock(out):
        return _write_record(out, paths[1].stem, entry)


def _undo_writing(out: Path, video: Path, paths: tuple[Path, Path], previous: Any) -> None:
    """The renames were undone (the files are as they were before `_begin_writing`): its entry back
    (the earlier run's, or this run's claim), unless another run has changed it since. A record that
    cannot be read or written keeps the mark (the pair is then made again: safe)."""
    from controlfoley.errors import MediaError

    source, name = str(video.resolve()), paths[1].stem
    with contextlib.suppress(OSError, MediaError), _folder_lock(out):
        entry = read_manifest(out, raw=True).get(name)
        if isinstance(entry, dict) and entry.get("writing") and entry.get("source") == source:
            _write_record(out, name, previous if isinstance(previous, dict) else {"source": source, "pending": True})


def _half_written(entry: dict[str, Any], video: Path) -> bool:
    """Whether `entry` marks its pair as being written from `video` when its run stopped (see
    `_begin_writing`): the files under its name are that run's, in any state."""
    return bool(entry.get("pending") and entry.get("writing")) and entry.get("source") == str(video.resolve())


# what a killed run leaves in --out for an output NAME: atomic_path's temporary files (".NAME.tmp-" +
# mkstemp's 8 characters + the suffix; nested where the writer is itself atomic, as mux_audio and
# save_audio are: "..NAME.tmp-abcdefgh.tmp-ijklmnop.mp4"), and the hard link a replaced video is kept
# under until both renames are done (".NAME.mp4.old-" + 8 hex digits); and a temporary generate.json,
# and the file a run holds locked while it lives (".generate.run-" + mkstemp's 8 characters + ".lock")
_TEMP_STEM = re.compile(r"\A\.(?P<stem>.+)\.tmp-[a-z0-9_]{8}\Z")
_VIDEO_BACKUP = re.compile(r"\A\.(?P<name>.+)\.mp4\.old-[0-9a-f]{8}\Z")
_RECORD_TEMP = re.compile(r"\A\.generate\.tmp-[a-z0-9_]{8}\.json\Z")
_RUN_LOCK = re.compile(r"\A\.generate\.run-[a-z0-9_]{8}\.lock\Z")


def _leftover_for(filename: str, names: set[str]) -> bool:
    """Whether `filename` is a temporary file of a writer of one of the outputs `names`."""
    if m := _VIDEO_BACKUP.match(filename):
        return m["name"] in names
    stem, dot, suffix = filename.rpartition(".")
    if not dot or suffix not in ("wav", "flac", "mp4"):
        return False
    while m := _TEMP_STEM.match(stem):  # unwrapped one atomic_path at a time
        stem = m["stem"]
        if stem in names:
            return True
    return False


def _remove_leftovers(out: Path, names: set[str], stack: contextlib.ExitStack) -> list[str]:
    """Remove the temporary files a killed run left in OUT for the outputs `names` (the ones this
    run makes or keeps: a run writing other names into OUT keeps its own), a temporary
    generate.json, and the run files of killed runs; and start this run's own run file, held in
    `stack` (until the run ends). All under the folder's lock. Returns the names removed.

    Which files are a killed run's: every generate run holds, from here until it ends, an flock on
    its own hidden run file in OUT (".generate.run-" + 8 random characters + ".lock", made under the folder's lock and
    removed when the run ends; one a killed run left is unlocked, so it is removed here), and makes
    all its temporary files after it. So a temporary file is removed only where it was last changed
    (its ctime: a write, a rename or a hard link all set it) before the run file of every other run
    that is live in OUT now was made: a live run's own, whatever their age (a long mux leaves a
    finished WAV untouched for a while), are never removed; a killed run's are, unless a run that
    started before it died is still live (then a later run removes them). A record temporary file
    is always removed: generate.json is only written under the lock held here. Without flock
    (Windows), no run is seen as live: as before, all are removed."""
    import os

    removed = []
    with _folder_lock(out):
        ours = _hold_run_file(out, stack)
        ours = None if ours is None else os.path.basename(ours)
        live_since = math.inf  # when the oldest other live run began (its run file's ctime)
        for entry in os.scandir(out):
            if _RUN_LOCK.match(entry.name) and entry.name != ours:
                since = _live_since(entry.path)
                if since is not None:
                    live_since = min(live_since, since)
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
        for entry in os.scandir(out):
            record_temp = bool(_RECORD_TEMP.match(entry.name))
            if not (record_temp or _leftover_for(entry.name, names)):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and (record_temp or entry.stat(follow_symlinks=False).st_ctime < live_since):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return sorted(removed)


def _hold_run_file(out: Path, stack: contextlib.ExitStack) -> str | None:
    """This run's run file in OUT (see `_remove_leftovers`), flocked until `stack` closes, then
    removed; its path (None without flock). Made under the folder's lock, so that no other run
    sees it unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows: no run files
        return None
    import os
    import tempfile

    fd, path = tempfile.mkstemp(prefix=".generate.run-", suffix=".lock", dir=out)
    stack.callback(os.close, fd)  # (last: the lock goes with it)
    stack.callback(lambda: Path(path).unlink(missing_ok=True))
    fcntl.flock(fd, fcntl.LOCK_EX)
    return path


def _live_since(path: str) -> float | None:
    """When the run holding the run file `path` began (the file's ctime), or None when no run holds
    it (its run was killed: the flock went with it). One that cannot be opened or locked here (another
    user's; a file system that cannot tell) counts as live."""
    try:
        import fcntl
    except ImportError:  # Windows: no run is seen as live
        return None
    import os

    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:  # its run just ended
        return None
    except OSError:
        try:
            return os.stat(path).st_ctime
        except OSError:
            return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live run
            return os.fstat(fd).st_ctime
        return None
    finally:
        os.close(fd)


class _Interrupted(KeyboardInterrupt):
    """The run stopped by a signal: SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class _Interrupts:
    """SIGINT and SIGTERM while generate runs: `_Interrupted` at once (the file in progress is
    dropped: atomic writes leave no partial file), except while a pair is committed (`committing`:
    its record marked, its two renames, its record completed; milliseconds), where the signal is
    acted on once the pair is complete and recorded. A second signal there stops at once (the
    pair's mark then stays: it is made again). Installed from the main thread only, and only over
    the default handlers (a caller's own stay in charge)."""

    def __init__(self) -> None:
        self.depth = 0
        self.deferred: int | None = None

    def _handler(self, signum: int, frame: object) -> None:
        if self.depth and self.deferred is None:
            self.deferred = signum
            return
        raise _Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        import threading

        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(sig) is default:
                    previous[sig] = signal.signal(sig, self._handler)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextlib.contextmanager
    def committing(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.deferred is not None:
                signum, self.deferred = self.deferred, None
                raise _Interrupted(signum)


def _check_outputs(
    videos: Sequence[Path], pairs: Sequence[tuple[Path, Path]], *, overwrite: bool, why: Callable[[Path, tuple[Path, Path]], str] | None = None,
    unfinished: frozenset[Path] = frozenset(),
) -> None:
    """Before any sampling: no output replaces an input (its own or another's: --overwrite does not
    allow that); existing outputs only with --overwrite, naming what made them (and, with
    --skip-existing, `why(video, paths)` it was not kept), or where their video output is among
    `unfinished` (the pairs --skip-existing makes again: a stopped run left them half-written)."""
    from controlfoley.errors import MediaError

    inputs = {video.resolve(): video for video in videos}
    for video, paths in zip(videos, pairs, strict=True):
        for path in paths:
            hit = inputs.get(path.resolve())
            if hit is not None:
                whose = "its own input" if hit == video else f"the input video {hit} (given in this run)"
                raise MediaError(f"output {path} (for {video}) would replace {whose}; choose another --out")
    existing = [(video, paths, path) for video, paths in zip(videos, pairs, strict=True) if paths[1] not in unfinished for path in paths if path.exists()]
    if existing and not overwrite:
        video, paths, first = existing[0]
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        if why is not None:
            raise MediaError(
                f"output {first} already exists and --skip-existing does not keep it: {why(video, paths)}{more}; add --overwrite "
                "(with --skip-existing: only the outputs not kept are made again), or choose another --out"
            )
        entry = read_manifest_or_empty(first.parent).get(first.stem)
        made = f", made from {entry['source']} by an earlier run" if entry and entry.get("source") else ", not recorded as generate's output"
        if entry and entry.get("source") and entry.get("pending"):
            made = (
                f", left half-written by a run from {entry['source']} that was stopped" if entry.get("writing")
                else f", not recorded as complete (a run from {entry['source']} that was stopped had reserved its name)"
            )  # fmt: skip
        raise MediaError(
            f"output {first} already exists{made}{more}; pass --overwrite to replace it, --skip-existing to keep what an interrupted run "
            "with these settings made (and make the rest), or choose another --out"
        )


def _write(
    video: Path, result: Any, audio_path: Path, video_path: Path, *, begin: Callable[[], None] | None = None, undo: Callable[[], None] | None = None
) -> None:
    """Both outputs, or neither: each goes to a temporary name; once both are complete, `begin()`
    runs (generate marks the pair's record as being written), then the video is renamed into place,
    then the audio. If the audio's rename fails (an error, not a signal), the video's is undone: a
    new video is removed, a replaced one restored from a hard link kept until both are in place;
    where the files on disk are then as they were (neither new file in place: each checked by its
    inode, not inferred from where the error came), `undo()` runs (the record's mark is taken
    back). Where they are not (no hard links on this file system), and after a signal that stops
    the run midway (a second Ctrl-C or SIGTERM while the pair is committed: nothing is put back),
    the mark stays: the pair counts as unfinished, whatever mix of old and new files it left."""
    import os
    import secrets

    from controlfoley._io import atomic_path
    from controlfoley.audio.io import save_audio
    from controlfoley.video import mux_audio

    def inode(path: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    existed, backup, begun = video_path.exists(), None, False
    new: dict[Path, tuple[int, int] | None] = {}  # each output -> the inode of its complete temporary file
    try:
        with atomic_path(audio_path) as tmp_audio:
            with atomic_path(video_path) as tmp_video:
                save_audio(tmp_audio, result.wav, result.sample_rate)
                mux_audio(video, result.wav, result.sample_rate, tmp_video)
                new = {audio_path: inode(tmp_audio), video_path: inode(tmp_video)}  # a rename keeps the inode
                if existed:
                    backup = video_path.with_name(f".{video_path.name}.old-{secrets.token_hex(4)}")
                    try:
                        os.link(video_path, backup)
                    except OSError:  # no hard links on this file system: a failed audio rename leaves the new video
                        backup = None
                if begin is not None:
                    begin()
                begun = True
    except Exception:
        placed = {path for path, ino in new.items() if ino is not None and inode(path) == ino}  # the new files in place
        if placed == {video_path}:  # the audio's rename failed: the video's undone
            if backup is not None:
                os.replace(backup, video_path)
                backup, placed = None, set()
            elif not existed:
                video_path.unlink(missing_ok=True)
                placed = set()
        if begun and not placed and undo is not None:  # the files as they were before begin(): its mark taken back
            undo()
        raise
    finally:
        if backup is not None:
            backup.unlink(missing_ok=True)


def _failed(row: dict[str, Any], video: Path, e: BaseException) -> None:
    """A file's error into its summary row: a library error in one line, anything else as a bug
    (with its traceback logged): a bug on one file must not cost the rest of a long run."""
    from controlfoley.errors import ControlFoleyError, RegistryError, one_line

    if isinstance(e, (ControlFoleyError, RegistryError, OSError, ValueError)):
        msg = one_line(e)
        row["status"] = "error: " + (msg if msg.startswith(str(video)) else f"{video}: {msg}")
    else:
        log.error("unexpected error on %s (a bug: please report it with this traceback)", video, exc_info=e)
        row["status"] = f"error: {video}: unexpected {type(e).__name__}: {one_line(e)} (a bug; the traceback is above)"


def _run_batch(pipe: Any, args: argparse.Namespace, items: Sequence[tuple[Path, tuple[Path, Path]]], rows: list[dict[str, Any]]) -> None:
    """Foley for a batch of files, one summary row each (appended to `rows` as each file starts: a
    run stopped midway has the rows so far): every file's features are read (a file that fails
    there fails alone), the rest sample together (`FoleyPipeline.generate_many`; if that fails, each
    samples alone, so that only the file at fault fails), then each is written and recorded. A
    row's time is its own reading and writing plus its share of the batch's sampling."""
    ready = []
    settings = dict(steps=args.steps, cfg_scale=args.cfg_scale, seed=args.seed, guidance=args.rule, guidance_every=args.guidance_every, control_scale=args.control_scale)
    for video, paths in items:
        row: dict[str, Any] = {"file": str(video), "duration": None, "windows": None, "time": 0.0}
        rows.append(row)
        t0 = time.perf_counter()
        try:
            check_writable_folder(args.out, "--out")
            paths = claim_outputs(args.out, video, paths)  # another run into --out may have taken the planned name since
            ready.append((row, video, paths, pipe.read_features(video)))
        except Exception as e:  # noqa: BLE001  (sorted by _failed)
            _failed(row, video, e)
        row["time"] += time.perf_counter() - t0
    results: list[Any] | None = None
    if len(ready) > 1:
        t0 = time.perf_counter()
        try:
            results = pipe.generate_many([r[3] for r in ready], args.prompt, args.negative_prompt, batch_size=len(ready), **settings)
        except Exception as e:  # noqa: BLE001  each file alone below: the error then names the file at fault
            from controlfoley.errors import one_line

            if not getattr(args, "warned_batch", False):  # once: a batch too large for the GPU would fail every time
                log.warning(
                    "sampling %d files together failed (%s: %s); each is sampled alone instead, so only a file at fault fails. "
                    "If the batch does not fit in memory, a smaller --batch-size is faster", len(ready), type(e).__name__, one_line(e),
                )
                args.warned_batch = True
            log.info("the batch's error", exc_info=True)
        for r in ready:
            r[0]["time"] += (time.perf_counter() - t0) / len(ready)
    for k, (row, video, paths, (streams, duration)) in enumerate(ready):
        t0 = time.perf_counter()
        try:
            result = results[k] if results is not None else pipe.generate(streams, duration, args.prompt, args.negative_prompt, **settings)
            row.update(duration=result.duration_s, windows=len(result.windows))
            _commit(args, pipe, video, paths, result, row)
        except Exception as e:  # noqa: BLE001  (sorted by _failed)
            _failed(row, video, e)
        row["time"] += time.perf_counter() - t0


def _commit(args: argparse.Namespace, pipe: Any, video: Path, paths: tuple[Path, Path], result: Any, row: dict[str, Any]) -> None:
    """Write one file's pair and record it. From the moment its record is marked as being written
    (`_begin_writing`, once both temporary files are complete) until the complete entry is written,
    a SIGINT or SIGTERM waits (`_Interrupts.committing`): a stopped run leaves the pair complete and
    recorded, or as it was. A SIGKILL there, or a second signal, leaves the mark, and the pair is
    made again."""
    interrupts: _Interrupts = args.interrupts
    with contextlib.ExitStack() as stack:
        previous: list[Any] = []

        def begin() -> None:
            stack.enter_context(interrupts.committing())
            previous.append(_begin_writing(args.out, video, paths))

        try:
            _write(video, result, *paths, begin=begin, undo=lambda: _undo_writing(args.out, video, paths, previous[0] if previous else None))
        except OSError as e:  # a full disk, a folder gone read-only: named, with how to go on
            from controlfoley._io import write_failure
            from controlfoley.errors import MediaError

            raise MediaError(
                write_failure(e.filename or paths[0], e, fix="choose a writable --out", folder=args.out)
                + "; the outputs written so far are kept: run the same command again with --skip-existing to make the rest"
            ) from e
        _record(args, pipe, video, paths, result.duration_s)
        _report_clipping(args, video, paths, result.wav)
        row["status"], row["output"] = "ok", f"{paths[0].name}, {paths[1].name}"


def _report_clipping(args: argparse.Namespace, video: Path, paths: tuple[Path, Path], wav: Any) -> None:
    """One warning for a file whose waveform peaks past full scale, naming it and its outputs (the
    pipeline and the writers leave it to this: `_caller_reports_clipping`)."""
    from controlfoley.audio.io import _clipping

    clip = _clipping(wav)
    if clip is not None:
        peak, n, size = clip
        fix = "Try a better-trained --model" + (", or leave --vocoder out (the model's own vocoder)" if args.vocoder else "")
        log.warning(
            "%s: the generated waveform peaks at %.3g, past full scale (1.0): %s and %s hold %d of its %d samples (%.0f%%) clipped "
            "to [-1, 1], a distorted sound; an under-trained model or vocoder? %s",
            video, peak, paths[0].name, paths[1].name, n, size, 100.0 * n / size, fix,
        )  # fmt: skip


def read_manifest(folder: Path, *, raw: bool = False) -> dict[str, Any]:
    """The entries of FOLDER/generate.json (output stem -> {"source", "audio", "video", "settings", ...});
    {} when there is none. A file that is not JSON, or not this record, raises MediaError naming it;
    a bad entry does not spoil the others: its "problem" says what is wrong with it, and a relative
    source is read from FOLDER. `raw`: the entries as written (for rewriting the record)."""
    import json

    from controlfoley.errors import MediaError

    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MediaError(f"{path} cannot be read as JSON ({e}); delete or repair it (controlfoley generate rewrites it)") from None
    outputs = data.get("outputs") if isinstance(data, dict) and data.get("format") == _MANIFEST_FORMAT else None
    if not isinstance(outputs, dict):
        raise MediaError(f"{path} is not a controlfoley generate record (format {_MANIFEST_FORMAT!r}, an 'outputs' object); rename it, it is not read")
    if raw:
        return dict(outputs)
    entries: dict[str, dict[str, Any]] = {}
    for name, entry in outputs.items():
        if not isinstance(entry, dict):
            entries[name] = {"source": None, "problem": f"its entry in {path} is not an object"}
        elif not isinstance(entry.get("source"), str) or not entry["source"]:
            entries[name] = {**entry, "source": None, "problem": f"its entry in {path} has no source path"}
        else:  # a relative path (a hand-edited record) is read from the record's folder
            src = Path(entry["source"])
            entries[name] = {**entry, "source": entry["source"] if src.is_absolute() else str((Path(folder) / src).resolve())}
            if entry.get("pending"):  # claimed, or being written, when the run stopped: its files (if any) are no output
                entries[name]["problem"] = (
                    f"generate did not finish it (its entry in {path} is pending: its run was stopped, or failed on it); "
                    "run that generate command again with --skip-existing to make it"
                )
    return entries


def _file_stamp(path: Path) -> dict[str, Any]:
    """Size and modification time of a file: a source replaced since generation is noticed."""
    st = path.stat()
    return {"bytes": st.st_size, "mtime": round(st.st_mtime, 3)}


def _source_stamp(path: Path) -> dict[str, Any]:
    """Size, time and SHA-256 of a source video: --skip-existing knows it again after a copy or a
    checkout that changed only its time."""
    stamp = _file_stamp(path)
    return {**stamp, "sha256": _sha256(str(path), stamp["bytes"], stamp["mtime"])}


def _same_source(entry: dict[str, Any], video: Path) -> bool:
    """Whether `video` is the file `entry` was made from: the same size, and the same time or (where
    the record has it) the same SHA-256."""
    if not video.is_file():
        return False
    was, now = entry.get("source_stamp") or {}, _file_stamp(video)
    if was.get("bytes") != now["bytes"]:
        return False
    if was.get("mtime") == now["mtime"]:
        return True
    return bool(was.get("sha256")) and was["sha256"] == _sha256(str(video), now["bytes"], now["mtime"])


def _model_stamp(model_file: str | None) -> dict[str, Any] | None:
    """Size, time and SHA-256 of the checkpoint that sampled (None for a preset without a file)."""
    if not model_file or not Path(model_file).is_file():
        return None
    stamp = _file_stamp(Path(model_file))
    return {**stamp, "sha256": _sha256(model_file, stamp["bytes"], stamp["mtime"])}


@functools.lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime: float) -> str:
    """The file's SHA-256 (the model checkpoint's: read once per run, cached by size and time)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _sampled_dtype(pipe: Any) -> str:
    """The dtype the pipeline's token sampling runs in ("float32", "bfloat16"), as `precision`
    resolves on the model's device (the "auto" of the command line made concrete)."""
    import torch

    from controlfoley.fast import sampling_dtype
    from controlfoley.model import param_dtype
    from controlfoley.pipeline import PRECISIONS

    model = pipe.model
    dt = sampling_dtype(model.device, PRECISIONS[pipe.precision], param_dtype(model.backbone, torch.float32))
    return str(dt).removeprefix("torch.")


def _record(args: argparse.Namespace, pipe: Any, video: Path, paths: tuple[Path, Path], duration_s: float) -> None:
    """Add this output to DIR/generate.json, with the settings that made it as resolved (the
    model's own steps, scale and rule where none was given; the extractors and text encoder used;
    the model file). A record that cannot be written costs a warning, not the file: the outputs
    are already in place."""
    import datetime

    from controlfoley import __version__
    from controlfoley.errors import one_line

    entry = {
        "source": str(video.resolve()), "source_stamp": _source_stamp(video), "audio": paths[0].name, "video": paths[1].name,
        "duration_s": duration_s, "settings": _settings(args, pipe), "controlfoley": __version__,
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    try:
        update_record(args.out, paths[1].stem, entry)
    except OSError as e:
        log.warning(
            "cannot write %s (%s): the outputs for %s are complete, but the record still marks them unfinished: `controlfoley evaluate` "
            "will need --reference, and --skip-existing makes them again", args.out / MANIFEST, one_line(e), video,
        )  # fmt: skip


def _scaled(rule: Any) -> bool:
    """Whether --cfg-scale changes `rule` (not `none`, which samples one condition set unguided)."""
    from controlfoley.guidance import ignores_scale

    return isinstance(getattr(rule, "scale", None), float) and not ignores_scale(rule)


def _as_sampled(args: argparse.Namespace, pipe: Any) -> Any:
    """The rule as it samples, for the record: `args.sampled_rule` (worked out once in main), at
    --cfg-scale where generate runs a copy holding it. A no-prompt fallback the pipeline made from
    the rule at --cfg-scale (its `without_text()`) samples as it is, at the scale it derived. A rule
    whose scale cannot be set is a ConfigError naming --cfg-scale (main asks before any file)."""
    rule = args.sampled_rule
    if args.cfg_scale is not None and _scaled(rule) and id(rule) not in pipe._scaled_fallbacks:
        from controlfoley.guidance import with_scale

        rule = with_scale(rule, float(args.cfg_scale), "--cfg-scale")
    return rule


def _settings(args: argparse.Namespace, pipe: Any) -> dict[str, Any]:
    """The settings an output is recorded with, as resolved (the model's own steps, scale and rule
    where none was given; the extractors and text encoder used; the model file's stamp)."""
    import torch

    model = pipe.model
    rule = _as_sampled(args, pipe)
    model_file = getattr(model, "loaded_from", None)
    model_file = str(Path(model_file).resolve()) if model_file else None  # the file read, also for a run folder (load_model)
    settings = {
        "model": args.model, "model_file": model_file,
        "model_file_stamp": args.model_stamp if hasattr(args, "model_stamp") else _model_stamp(model_file),
        "prompt": args.prompt, "negative_prompt": args.negative_prompt,
        "steps": args.steps or model.sampler.steps, "cfg_scale": args.cfg_scale if args.cfg_scale is not None else rule.scale,
        "guidance": repr(rule), "guidance_every": args.guidance_every, "seed": args.seed, "precision": args.precision,
        "control_scale": 1.0 if args.control_scale is None else args.control_scale,
        "overlap": args.overlap, "join": args.join, "batch_size": pipe._batch_size(args.batch_size),
        # what a seed's tokens depend on besides the settings: the device and the precision that sampled
        "device": str(model.device), "sampled_dtype": _sampled_dtype(pipe), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
        "extractors": {k: getattr(e, "name", type(e).__name__) for k, e in pipe.extractors.items()},
        "text_encoder": getattr(pipe.text_encoder, "name", None) if pipe.text_encoder is not None else None,
        "vocoder": args.vocoder or model.config.vocoder.name,
        "command_line": {"extractor": list(args.extractor), "text_encoder": args.text_encoder, "guidance": args.guidance},
    }  # fmt: skip
    return settings


# settings recorded for information, not compared by --skip-existing: how they were spelled on the
# command line, the CPU thread count (it changes the waveform's last bits at most) and the batch size
# (the same tokens on the CPU; a GPU's batched products may round a few differently)
_NOT_COMPARED = ("command_line", "cpu_threads", "batch_size")


def _not_kept(entry: dict[str, Any], video: Path, paths: tuple[Path, Path], now: dict[str, Any]) -> str | None:
    """--skip-existing: why the outputs `entry` (OUT/generate.json's record of `paths`) records are
    not kept for `video` with settings `now`, or None when they are: complete, both on disk, made
    from this very source (same path; same size, and same time or SHA-256) with these settings."""
    if _half_written(entry, video):
        return "a run that was stopped left it half-written"
    if not entry or entry.get("pending") or "problem" in entry:
        return "its record in generate.json is missing or unfinished"
    if entry.get("source") != str(video.resolve()):
        return f"it was made from {entry.get('source')}"
    if not _same_source(entry, video):
        return f"{video} changed since it was made (its size or content)"
    if (entry.get("audio"), entry.get("video")) != (paths[0].name, paths[1].name) or not (paths[0].is_file() and paths[1].is_file()):
        return "one of its two outputs is missing"
    was, now = _as_compared(entry.get("settings") or {}), _as_compared(now)
    keys = sorted(k for k in set(was) | set(now) if k not in _NOT_COMPARED and was.get(k) != now.get(k))
    if not keys:
        return None
    return "it was made with other settings (" + ", ".join(f"{k}: {was.get(k)!r} then, {now.get(k)!r} now" for k in keys[:3]) + (", ..." if len(keys) > 3 else "") + ")"


def _as_compared(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as --skip-existing compares them: the model file by its content (SHA-256), not its
    size and time (a model file saved again with the same weights is the same model)."""
    stamp = settings.get("model_file_stamp")
    if isinstance(stamp, dict):  # a record without a hash (none was taken): said so, not read as "no model file"
        stamp = stamp.get("sha256") or "(no SHA-256 recorded)"
    return {**settings, "model_file_stamp": stamp}


def update_record(folder: Path, name: str, entry: dict[str, Any]) -> None:
    """Set FOLDER/generate.json's entry `name`, keeping the others as written: read, change and
    rewrite (atomically) under an exclusive lock on FOLDER itself (flock on the directory, no lock
    file left behind), so that generate runs writing into one folder at once keep each other's
    entries (POSIX; elsewhere unlocked). An unreadable record is kept aside and a new one started."""
    with _folder_lock(Path(folder)):
        _write_record(Path(folder), name, entry)


def _write_record(folder: Path, name: str, entry: dict[str, Any]) -> Any:
    """update_record's read-change-write, for a caller that holds the folder's lock; returns the
    entry `name` had (as written), or None."""
    import datetime
    import json
    import os

    from controlfoley._io import atomic_write_text
    from controlfoley.errors import MediaError, one_line

    path = folder / MANIFEST
    try:
        entries = read_manifest(folder, raw=True)  # other entries are kept as written, hand edits included
    except MediaError as e:
        aside = path.with_name(f"{MANIFEST}.unreadable-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}")
        log.warning("%s; it is kept as %s and a new record is started", one_line(e), aside.name)
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        entries = {}
    previous = entries.get(name)
    entries[name] = entry
    text = json.dumps({"format": _MANIFEST_FORMAT, "outputs": dict(sorted(entries.items()))}, indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(path, text)
    return previous


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on the directory itself while the block runs (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: unlocked
        yield
        return
    import os

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def format_table(rows: Sequence[dict[str, Any]], total: int | None = None) -> str:
    """The end-of-run summary: one row per input file (`total`: the files of a run stopped before
    it reached them all)."""
    head = ("file", "duration", "windows", "time", "status", "written")
    body = [
        (
            r["file"],
            "-" if r["duration"] is None else f"{r['duration']:.2f} s",
            "-" if r["windows"] is None else str(r["windows"]),
            f"{r['time']:.1f} s",
            r["status"] if r["status"] in ("ok", "kept", "interrupted") else "error",
            r.get("output", "-"),  # a repeated stem is written as <stem>-2, <stem>-3, ...
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (head, *body)]
    ok = sum(r["status"] in ("ok", "kept") for r in rows)
    kept = sum(r["status"] == "kept" for r in rows)
    return "\n".join([*lines, f"{ok} of {len(rows) if total is None else total} files ok" + (f" ({kept} kept from an earlier run)" if kept else "")])


def main(argv: Sequence[str]) -> int:
    """Run `controlfoley generate` with the command line `argv` (without the program name); returns
    the exit code (see the module's docstring). Ctrl-C (SIGINT) and SIGTERM do not raise
    KeyboardInterrupt out of here: the run stops, says so, and returns 128 + the signal's number
    (130, 143), so a Python caller that calls main() in a loop should check the code it returns
    and stop on those."""
    args = _parser().parse_args(list(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args.interrupts = _Interrupts()
    args.progress = None  # (rows, total) once files are generated: what an interrupt here can say was made
    with args.interrupts.installed(), contextlib.ExitStack() as stack:
        try:
            return _main(args, stack)
        except KeyboardInterrupt as e:  # in the checks, or a second one while the summary prints (or in the final table)
            signum = getattr(e, "signum", signal.SIGINT)
            name = signal.Signals(signum).name
            if args.progress is None:  # loading the model, the checks: no file started
                print(f"interrupted ({name}) before any file was generated: nothing was written", file=sys.stderr)
            else:
                rows, total = args.progress
                done = sum(r.get("status") in ("ok", "kept") for r in rows)
                again = "run the same command again" if args.skip_existing else "run the same command again with --skip-existing"
                rest = f"; {again} to keep those made and make the rest" if done < total else ""
                print(f"interrupted ({name}): {done} of {total} files made{rest}", file=sys.stderr)
            return 128 + signum


def _main(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    from tqdm import tqdm

    from controlfoley.audio.io import _caller_reports_clipping
    from controlfoley.errors import ControlFoleyError, RegistryError, one_line

    try:  # every check of the command line runs once, cheapest first, before any sampling
        args.videos = _expand_folders(args.videos)
        videos = [Path(v) for v in args.videos]
        pairs = _outputs(args.videos, args.out, args.format)
        _check_numbers(args)
        if args.out.exists() and not args.out.is_dir():  # before the model loads
            check_writable_folder(args.out, "--out")
        _check_device(args.device)
        extractors, vocoder = _extractor_specs(args.extractor), _vocoder_spec(args.vocoder)
        pipe = _build_pipeline(args, extractors, vocoder)  # a bad name or file is reported before a clash of outputs
        args.sampled_rule = _quietly_sampled_rule(pipe, args)  # for the record (its warnings come when sampling, not before a refusal)
        _as_sampled(args, pipe)  # a rule whose scale --cfg-scale cannot set: said now, not after the first output
        loaded = getattr(pipe.model, "loaded_from", None)
        # the weights' stamp as loaded: a file replaced while this runs (a run still training) must not stamp outputs it did not make
        args.model_stamp = _model_stamp(str(Path(loaded).resolve()) if loaded else None)
        names = {p[1].stem for p in pairs}
        kept: list[dict[str, Any]] = []
        why: Callable[[Path, tuple[Path, Path]], str] | None = None
        redo: frozenset[Path] = frozenset()
        if args.skip_existing:  # outputs this very run would make, already made: kept, not made again
            record, now = read_manifest_or_empty(args.out), _settings(args, pipe)
            entries = [record.get(p[1].stem) or {} for p in pairs]
            reasons = [_not_kept(e, v, p, now) for e, v, p in zip(entries, videos, pairs, strict=True)]
            kept = [_kept_row(e, v, p) for e, v, p, r in zip(entries, videos, pairs, reasons, strict=True) if r is None]
            not_kept = {(v, p[1]): r for v, p, r in zip(videos, pairs, reasons, strict=True) if r is not None}
            # a pair a stopped run left half-written (its mark in the record): made again, no --overwrite needed
            redo = frozenset(p[1] for e, v, p in zip(entries, videos, pairs, strict=True) if _half_written(e, v))
            left = [(v, p) for v, p, r in zip(videos, pairs, reasons, strict=True) if r is not None]
            videos, pairs = [v for v, _ in left], [p for _, p in left]
            why = lambda v, p: not_kept[(v, p[1])]  # noqa: E731  (what _check_outputs says of an existing output not kept)
        _check_outputs(videos, pairs, overwrite=args.overwrite, why=why, unfinished=redo)
        from controlfoley.data.real_extractors import check_unique_stems

        check_unique_stems(list(pipe.extractors.values()), videos)  # precomputed features are found by file stem
        # last, as nothing else failed: a folder no file can be written to fails every file alike (exit 2, no
        # sampling); it is made here if missing, and checked again per file (a disk can fill mid-run)
        check_writable_folder(args.out, "--out")
        leftovers = _remove_leftovers(args.out, names, stack)  # a killed run's temporary files for these outputs
    except (ControlFoleyError, RegistryError, ValueError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    if leftovers:
        some = ", ".join(leftovers[:3]) + (" ..." if len(leftovers) > 3 else "")
        print(f"removed {len(leftovers)} temporary file(s) a stopped run left in {args.out} ({some})", file=sys.stderr)
    rows: list[dict[str, Any]] = list(kept)
    if kept:
        print(f"{len(kept)} of {len(kept) + len(videos)} files already made with these settings (--skip-existing): kept", file=sys.stderr)
    if redo:
        print(f"{len(redo)} file(s) a stopped run left half-written (--skip-existing): made again", file=sys.stderr)
    items = list(zip(videos, pairs, strict=True))
    total, batch = len(rows) + len(items), pipe._batch_size(args.batch_size)
    args.progress = rows, total
    try:
        with tqdm(total=len(items), desc="generate", unit="file", disable=None) as bar:
            for c in range(0, len(items), batch):
                start = len(rows)
                with _caller_reports_clipping():  # a clipped waveform: said once per file, by _commit, naming it
                    _run_batch(pipe, args, items[c : c + batch], rows)
                for row in rows[start:]:
                    if row["status"] != "ok":
                        tqdm.write(row["status"], file=sys.stderr)
                    bar.update(1)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (_Interrupted): the files made so far are complete and recorded
        signum = getattr(e, "signum", signal.SIGINT)
        for row in rows:
            row.setdefault("status", "interrupted")
        print(format_table(rows, total=total))
        done = sum(r["status"] in ("ok", "kept") for r in rows)
        stopped = [Path(r["file"]).name for r in rows if r["status"] == "interrupted"]
        dropped = f"{', '.join(stopped)} not written (no partial output is left)" if stopped else "the file in progress was completed first"
        again = "run the same command again" if args.skip_existing else "run the same command again with --skip-existing"
        print(
            f"interrupted ({signal.Signals(signum).name}): {done} of {total} files made, {dropped}; {again} to keep those made "
            "and make the rest", file=sys.stderr,
        )  # fmt: skip
        return 128 + signum
    print(format_table(rows))
    return 0 if all(r["status"] in ("ok", "kept") for r in rows) else 1


def _quietly_sampled_rule(pipe: Any, args: argparse.Namespace) -> Any:
    """The rule that samples (a no-prompt fallback included), worked out without its warnings, which
    the first sampling gives (before, they were printed above a refusal of the command line)."""
    plog = logging.getLogger("controlfoley.pipeline")
    level, warned = plog.level, pipe._warned_no_prompt
    plog.setLevel(logging.ERROR)
    try:
        return pipe._conditions(args.prompt, args.negative_prompt, args.rule, args.cfg_scale)[2] or pipe.model.guidance
    finally:
        plog.setLevel(level)
        pipe._warned_no_prompt = warned


def _kept_row(entry: dict[str, Any], video: Path, paths: tuple[Path, Path]) -> dict[str, Any]:
    """The summary row of a file --skip-existing keeps (`entry`: its record)."""
    return {"file": str(video), "duration": entry.get("duration_s"), "windows": None, "time": 0.0, "status": "kept", "output": f"{paths[0].name}, {paths[1].name}"}


if __name__ == "__main__":
    import warnings

    from controlfoley.cli import _plain_warning

    warnings.formatwarning = _plain_warning  # one plain line each, as the `controlfoley` program prints them
    raise SystemExit(main(sys.argv[1:]))
