"""`controlfoley demo` (what `make demo` runs): foley for a held-out synthetic video, end to end.

1. Render a held-out clip of the synthetic world (test split) and write it as a silent MP4.
2. Run the full pipeline on that file: video -> frames -> features -> ControlNet + MaskGIT sampling
   -> tokens -> mel -> waveform, with the shipped `specmaskfoley_synthetic` weights (trained on a
   CPU by `controlfoley experiment synthetic`).
3. Write the WAV, the video with its new sound track (MP4), and a PNG with the generated and the
   true mel spectrograms and the true event times marked; print where they are and the onset error.

If the shipped weights are missing (a checkout without `controlfoley/assets/`) and no --model is
given, the demo says so and runs the same pipeline with an untrained tiny model: the output is then
noise, as it says. A --model that cannot be found or loaded, an --index outside the test split and
an --out that cannot be written are one-line errors (exit status 2).
"""

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from PIL import Image, ImageDraw

from controlfoley._io import check_writable_folder
from controlfoley.errors import ConfigError, ControlFoleyError, RegistryError, one_line
from controlfoley.typing import Tensor

if TYPE_CHECKING:
    from controlfoley.pipeline import FoleyPipeline

__all__ = ["demo_main", "mel_png"]

_CMAP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float32)


def _colourise(mel: np.ndarray) -> np.ndarray:
    """[-1, 1] mel -> RGB with an inferno-like ramp (low frequencies at the bottom)."""
    x = np.clip((mel + 1.0) / 2.0, 0.0, 1.0)[::-1] * (len(_CMAP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_CMAP) - 2)
    frac = (x - lo)[..., None]
    return (_CMAP[lo] * (1 - frac) + _CMAP[lo + 1] * frac).astype(np.uint8)


def mel_png(
    path: Path,
    panels: Sequence[tuple[str, Tensor]],  # [m, n] mels; lengths may differ
    events: Sequence[tuple[float, tuple[int, int, int], str]],
    seconds_per_frame: float,
    onsets: Sequence[float] = (),
    scale: int = 2,
) -> Path:
    """Stacked mel panels with vertical lines at the true event times (class colour, name) and
    small ticks at the detected onsets of the first panel. Written atomically."""
    from controlfoley._io import atomic_path

    label_h = 14
    imgs = []
    for title, mel in panels:
        rgb = _colourise(mel.float().cpu().numpy())
        im = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.Resampling.NEAREST)
        canvas = Image.new("RGB", (im.width, im.height + label_h), (255, 255, 255))
        canvas.paste(im, (0, label_h))
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 1), title, fill=(0, 0, 0))
        for t, colour, name in events:
            x = int(t / seconds_per_frame * scale)
            draw.line([(x, label_h), (x, canvas.height)], fill=colour, width=1)
            draw.text((x + 2, label_h + 2), name, fill=colour)
        imgs.append(canvas)
    for t in onsets:  # detected onsets of the generated audio: ticks under the first panel's title
        x = int(t / seconds_per_frame * scale)
        ImageDraw.Draw(imgs[0]).polygon([(x - 4, label_h), (x + 4, label_h), (x, label_h + 8)], fill=(255, 255, 255))
    out = Image.new("RGB", (imgs[0].width, sum(i.height for i in imgs)), (255, 255, 255))
    y = 0
    for im in imgs:
        out.paste(im, (0, y))
        y += im.height
    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG")
    return path


SHIPPED = "specmaskfoley_synthetic"  # the preset whose shipped weights the demo runs by default


def _load_pipeline(model: str | None) -> tuple[object, bool]:
    """(pipeline, trained). `model` None: the shipped weights, or an untrained tiny model when they are
    missing (a checkout without controlfoley/assets/). A `model` given is loaded or is an error."""
    from controlfoley.builder import build_model
    from controlfoley.pipeline import FoleyPipeline, default_extractors
    from controlfoley.presets import PRETRAINED, pretrained_path

    name = SHIPPED if model is None else model
    if Path(name).exists() or pretrained_path(name) is not None:
        return FoleyPipeline.from_pretrained(name), True
    if model is not None:
        if model in PRETRAINED:
            raise ConfigError(
                f"--model {model}: its shipped weights are missing (controlfoley/assets/{PRETRAINED[model]}); reinstall "
                "controlfoley, or leave --model out to run the demo with an untrained model"
            )
        raise ConfigError(
            f"--model {model!r} is neither an existing checkpoint (file, folder or training run) nor a preset that ships "
            f"weights ({', '.join(sorted(PRETRAINED))}); check the name or path, or leave --model out for the shipped {SHIPPED}"
        )
    print(f"NOTE: no trained weights found for {name!r} (controlfoley/assets/ is missing?).")
    print("      Running the same pipeline with an UNTRAINED specmaskfoley_tiny: the audio will be noise.")
    untrained = build_model("specmaskfoley_tiny").eval()
    extractors, text = default_extractors(untrained)
    return FoleyPipeline(untrained, extractors, text), False


def _check_index(index: int) -> None:
    from controlfoley.data.synthetic import _SPLIT_SIZE

    if not 0 <= index < _SPLIT_SIZE:
        raise ConfigError(f"--index {index}: the test split's clips are numbered 0 to {_SPLIT_SIZE - 1}; give one in that range (default 7)")


def run_demo(out: Path, model: str | None = None, index: int = 7, seed: int = 0) -> dict[str, object]:
    """`model` None: the shipped specmaskfoley_synthetic weights (an untrained model if they are missing)."""
    from controlfoley.data.synthetic import SyntheticWorld
    from controlfoley.evaluation import detect_onsets, evaluate_clip, world_classifier
    from controlfoley.video import write_video

    t0 = time.time()
    _check_index(index)  # the cheap checks first, before the model loads
    check_writable_folder(out, "--out")
    loaded, trained = _load_pipeline(model)
    pipe = cast("FoleyPipeline", loaded)  # what _load_pipeline gives (`object` there: the runtime checker need not import it)
    m = pipe.model
    world = SyntheticWorld(seed=0, duration_s=m.n_samples / m.sample_rate)
    clip = world.clip(world.split("test", index + 1)[index])
    video_in = write_video(out / "input_silent.mp4", clip.frames, clip.fps)
    print(f"rendered held-out clip {index} of the test split: {len(clip.events)} events ({clip.prompt}), {clip.duration_s:.2f} s")
    result = pipe(video_in, prompt=clip.prompt, seed=seed)
    wav_path = result.save(out / "foley.wav")  # the pipeline reported any clipping once; these say nothing more
    mp4_path = result.save_video(video_in, out / "foley.mp4")
    sr = result.sample_rate
    onsets = detect_onsets(result.wav, sr)
    scores = evaluate_clip(result.wav, clip, world_classifier(len(clip.class_names), sr))
    true_mel = m.mel(clip.audio[None])[0]
    events = [(e.time_s, world.class_colors[e.class_id], clip.class_names[e.class_id]) for e in clip.events]
    png = mel_png(out / "foley.png", [("generated", result.mel), ("true audio", true_mel)], events, m.mel.hop_length / sr, onsets)
    print(f"wrote {wav_path}\n      {mp4_path}\n      {png}\n      {video_in} (the rendered input, silent)")
    print("true events:      " + ", ".join(f"{e.time_s:.2f}s {clip.class_names[e.class_id]}" for e in clip.events))
    print("generated onsets: " + ", ".join(f"{t:.2f}s" for t in onsets))
    print(f"onset error (DeSync analogue, s): {scores['desync_s']:.3f}; class-aware F1 {scores['f1_cls']:.2f}; "
          f"{'trained' if trained else 'UNTRAINED'} model; {time.time() - t0:.1f} s in all")  # fmt: skip
    return {"wav": wav_path, "mp4": mp4_path, "png": png, "scores": scores, "trained": trained}


def demo_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="controlfoley demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/demo", help="folder for the WAV, the MP4 with sound, the PNG and the silent input MP4 (default: outputs/demo)")
    ap.add_argument("--model", default=None, help=f"preset with shipped weights, or a checkpoint path (default: the shipped {SHIPPED})")
    ap.add_argument("--index", type=int, default=7, help="which held-out test clip to render (default: 7)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        run_demo(Path(args.out), args.model, args.index, args.seed)
    except (ControlFoleyError, ConfigError, RegistryError, ValueError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0
