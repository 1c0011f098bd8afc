"""`controlfoley generate`: foley for a list of video files, one bad file never stopping the others.

    controlfoley generate VIDEO... --model PATH_OR_PRESET --out DIR [--prompt TEXT]
        [--negative-prompt TEXT] [--steps 12] [--cfg-scale 3] [--seed 0] [--format wav|flac]
        [--overlap 0.25] [--join crossfade|decode_once] [--extractor KEY=NAME[,ARG=VALUE...]]
        [--vocoder NAME[,ARG=VALUE...]] [--device cpu]

Features
- Per video: DIR/<stem>.wav (or .flac) and DIR/<stem>.mp4, the original video stream copied packet
  by packet (re-encoded only where MP4 cannot hold its codec) beside the new AAC audio track. Both
  files are written to temporary names and renamed only when both are complete, so a failure leaves
  no partial file. Two inputs with one stem get `<stem>-2`, ...; an output that would replace its
  own input is refused.
- A progress bar over files (tqdm, on a terminal); every failure (missing file, no video stream,
  truncated or corrupt file, zero-length video, unsupported codec, unwritable output folder,
  missing or mis-shaped precomputed features) prints one line `error: FILE: reason` and the run
  goes on; a summary table (file, duration, windows, time, status) ends the run.
- Exit code: 0 when every file succeeded, 1 when any failed, 2 for a bad command line, model,
  extractor or prompt (nothing generated).
- `--extractor clip=clip_openclip,weights=/w/clip.safetensors` replaces one feature extractor;
  values are read as JSON where they parse (numbers, true/false), else as strings.
"""

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_spec"]



def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """'NAME,ARG=VALUE,...' -> (NAME, {ARG: VALUE}); values parsed as JSON when they can be."""
    name, *args = [p.strip() for p in text.split(",")]
    kwargs: dict[str, Any] = {}
    for a in args:
        if "=" not in a:
            raise ValueError(f"{text!r}: expected ARG=VALUE after the name, got {a!r}")
        k, v = a.split("=", 1)
        try:
            kwargs[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            kwargs[k.strip()] = v
    if not name:
        raise ValueError(f"{text!r}: a registry name must come first")
    return name, kwargs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="controlfoley generate", description="Foley for video files (SpecMaskFoley).")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="input video files (any container/codec FFmpeg decodes)")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors or folder) or a preset that ships weights")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--prompt", default=None, help="text prompt (CLAP role); without it, video-only CFG")
    p.add_argument("--negative-prompt", default=None, help="text the sampler steers away from")
    p.add_argument("--steps", type=int, default=None, help="MaskGIT steps (default: the model's, 12)")
    p.add_argument("--cfg-scale", type=float, default=None, help="final CFG scale (default: the model's, 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("wav", "flac"), default="wav")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap for long videos, fraction of a window")
    p.add_argument("--join", choices=("crossfade", "decode_once"), default="crossfade")
    p.add_argument("--extractor", action="append", default=[], metavar="KEY=NAME[,ARG=VALUE...]")
    p.add_argument("--vocoder", default=None, metavar="NAME[,ARG=VALUE...]", help="default: the model's own")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto",
        help="token sampling precision; auto: bf16 on CUDA, fp32 on CPU (bf16 on a CPU with AVX-512 bf16: ~1.6x faster at paper size, no gain for the tiny presets; CPUs without bf16 units may be slower)",
    )  # fmt: skip
    return p


def _build_pipeline(args: argparse.Namespace) -> Any:
    from controlfoley.pipeline import FoleyPipeline

    extractors = {}
    for item in args.extractor:
        key, sep, spec = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--extractor {item!r}: expected KEY=NAME[,ARG=VALUE...], e.g. clip=clip_openclip,weights=FILE")
        extractors[key] = parse_spec(spec)
    vocoder = None
    if args.vocoder:
        name, kwargs = parse_spec(args.vocoder)
        vocoder = {"name": name, **kwargs}
    return FoleyPipeline.from_pretrained(
        args.model, extractors=extractors, vocoder=vocoder, map_location=args.device, overlap=args.overlap, join=args.join,
        precision=args.precision,
    )  # fmt: skip


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


def _check_writable(folder: Path) -> None:
    """Fail early (before minutes of sampling) when the output folder cannot take new files."""
    from controlfoley.errors import MediaError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise MediaError(f"output folder {folder} is not writable ({e.strerror or e}); choose another --out") from None


def _outputs(videos: Sequence[str], out: Path, fmt: str) -> list[tuple[Path, Path]]:
    """(audio path, video path) per input; repeated stems get -2, -3, ... suffixes."""
    seen: dict[str, int] = {}
    pairs = []
    for v in videos:
        stem = Path(v).stem or "video"
        seen[stem] = seen.get(stem, 0) + 1
        name = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        pairs.append((out / f"{name}.{fmt}", out / f"{name}.mp4"))
    return pairs


def _write(video: Path, result: Any, audio_path: Path, video_path: Path) -> None:
    """Both outputs, or neither: each goes to a temporary name, renamed once both are complete."""
    from controlfoley._io import atomic_path
    from controlfoley.audio.io import save_audio
    from controlfoley.errors import MediaError
    from controlfoley.video import mux_audio

    if video_path.resolve() == video.resolve():
        raise MediaError(f"output {video_path} would replace its own input; choose another --out")
    with atomic_path(audio_path) as tmp_audio, atomic_path(video_path) as tmp_video:
        save_audio(tmp_audio, result.wav, result.sample_rate)
        mux_audio(video, result.wav, result.sample_rate, tmp_video)


def _run_one(pipe: Any, args: argparse.Namespace, video: Path, paths: tuple[Path, Path]) -> dict[str, Any]:
    from controlfoley.errors import ControlFoleyError, RegistryError

    row: dict[str, Any] = {"file": str(video), "duration": None, "windows": None}
    t0 = time.perf_counter()
    try:
        _check_writable(args.out)
        result = pipe(video, args.prompt, args.negative_prompt, steps=args.steps, cfg_scale=args.cfg_scale, seed=args.seed)
        row.update(duration=result.duration_s, windows=len(result.windows))
        _write(video, result, *paths)
        row["status"] = "ok"
    except (ControlFoleyError, RegistryError, OSError, ValueError) as e:
        msg = _one_line(e)
        row["status"] = "error: " + (msg if msg.startswith(str(video)) else f"{video}: {msg}")
    row["time"] = time.perf_counter() - t0
    return row


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The end-of-run summary: one row per input file."""
    head = ("file", "duration", "windows", "time", "status")
    body = [
        (
            r["file"],
            "-" if r["duration"] is None else f"{r['duration']:.2f} s",
            "-" if r["windows"] is None else str(r["windows"]),
            f"{r['time']:.1f} s",
            "ok" if r["status"] == "ok" else "error",
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (head, *body)]
    ok = sum(r["status"] == "ok" for r in rows)
    return "\n".join([*lines, f"{ok} of {len(rows)} files ok"])


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from tqdm import tqdm

    from controlfoley.errors import ControlFoleyError, RegistryError

    try:
        pipe = _build_pipeline(args)
        if args.prompt:
            pipe.encode_text(args.prompt)  # a typo in the prompt fails now, not after the first file
        if args.negative_prompt:
            pipe.encode_text(args.negative_prompt)
    except (ControlFoleyError, RegistryError, ValueError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    rows = []
    videos = [Path(v) for v in args.videos]
    for video, paths in tqdm(list(zip(videos, _outputs(args.videos, args.out, args.format), strict=True)), desc="generate", unit="file", disable=None):
        row = _run_one(pipe, args, video, paths)
        if row["status"] != "ok":
            tqdm.write(row["status"], file=sys.stderr)
        rows.append(row)
    print(format_table(rows))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
