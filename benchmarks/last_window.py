"""What commit 8c978fc's MaskGIT clamp changed in the output: the tokens a window decides when it
has fewer unknown tokens than steps (N < K = 12), under the old rule and the new one, in one process.

The change (controlfoley/sampling.py, `masked_count`): the number of tokens left masked after step
k < K - 1 was `min(max(target, 1), masked_now - 1)` (old) and is `max(1, min(masked_now - 1, target))`
(new, google-research/maskgit's order). They differ only when the bounds cross, which happens only
for N < K: the old rule decides the last token as soon as one is left; the new one keeps it masked
until the last step. With the paper's linear CFG ramp 0 -> 3 over 12 steps, per window:

- N = 5 (one new token column of the 5 x 32 grid): 4 tokens decided at steps 0-3 by both rules
  (identical); the 5th at step 4, scale 1.09 (old), or at step 11, scale 3.0 (new);
- N = 10 (two columns): 9 tokens identical; the 10th at step 9, scale 2.45 (old) or 11, 3.0 (new);
- N >= 12 (three columns and more): the same tokens (the control; asserted here).
N = 1 (the token drawn at scale 0, from the unconditional logits) cannot occur in the pipeline: a
column holds 5 tokens. So at most ONE token per window differs between the rules.

Where the pipeline meets small N (controlfoley/windows.py `plan_windows`): the shipped
`specmaskfoley_synthetic` has T = 32 columns of 4096 samples (5.944 s); with the default overlap
0.25 windows start every 24 columns and the last window is moved back to end at the video's last
column C = ceil(n_samples / 4096). Its new columns number ((C - 33) mod 24) + 1, i.e. 1 or 2 (N = 5
or 10) when C = 33, 34, 57, 58, 81, 82, ... (mod 24: 9 or 10): videos of 5.94-6.32 s, 10.40-10.77 s,
14.86-15.23 s, ..., 28.23-28.61 s, ... -- 2 durations in 24, about 1 video in 12 longer than one
window. Every other window has N >= 5 x 9 = 45 (the first: 160).

What is measured (all paired: the same clip, seed and noise under both rules):

1. Direct (`SpecMaskFoley.generate` with `known_codes` / `known_mask`): a window's true token map
   (its audio through the model's tokenizer) is given except its last c columns (c = 1, 2, 3; N = 5,
   10, 15), which are sampled, and those c columns are scored against the truth. Two sets of
   windows:
   - `end`: held-out test clips of the window's length, exactly as the model was trained (the world
     puts no onset in a clip's last 0.3 s, so the new columns hold decays and the noise floor). This
     is what the synthetic pipeline's last window looks like: its new columns end the video.
   - `onset`: windows cut from 11.9 s held-out clips so that a true onset (whose flash frame is in
     the window's video rows) lies in the last column: the case where the video should decide the
     new tokens (a real video can end on a sound; the shipped model never saw an onset there).
   Scores over the new columns' time span: token accuracy (generated == true token); mel error, the
   mean |generated - true| log-mel over the span's 16c frames x 80 bins, in dB (generated: the tokens
   decoded; true: the clip's own audio through the mel front end); level, the mean signed difference
   (dB; the model's mels are quieter than the truth and louder with more CFG); onset recall (a true
   onset in the span with a detected onset within 0.1 s) and spurious onsets (detected in the span,
   none of the window's true onsets within 0.1 s) on the waveform (Griffin-Lim of the window's last
   128 mel frames, then `controlfoley.metrics.onsets.detect_onsets`). Mel error is the main score:
   it reads the whole span, is deterministic given the tokens and is not thresholded. A "true tokens"
   row gives the tokenizer + vocoder ceiling of each score. In the `onset` set that ceiling is low
   (about 20% recall, 11 dB mel error for c = 1): the shipped tokenizer does not reconstruct an onset
   in a window's last column, so there onset recall says little and token accuracy / mel error
   carry the comparison.
2. Pipeline (`FoleyPipeline.generate_many` on features read from rendered MP4s, the real path:
   windows, inpainting continuation, crossfade join, Griffin-Lim): synthetic videos of 28.4 s and
   28.5 s (last window of 1 and 2 new columns), both rules; asserted: every token outside the last
   window's new columns is the same; scored in those columns' time span, as above, against the
   video's true audio.

Statistics: for each clip the mean over seeds, then mean +- standard error over clips (seeds of one
clip are not independent samples of the clip population); "new - old" is the same for the paired
per-clip differences, with |diff| / SE. "differ" is the fraction of (clip, seed) pairs whose tokens
differ at all between the rules (the rest contribute a difference of exactly 0).

The old rule is restored by a context manager that patches `controlfoley.sampling.masked_count`
(the sampler's `step` looks it up in that module at call time; nothing else imports it).

Usage (defaults: 350 s wall, 408 s CPU on the 2-core build machine, 2026-11-28; --guidance
cfg_video --cols 1 2: 196 s wall):
    .venv/bin/python benchmarks/last_window.py --clips 16 --seeds 4 --markdown
    .venv/bin/python benchmarks/last_window.py --clips 4 --seeds 1 --pipeline-seeds 1   # smoke run
"""

import argparse
import contextlib
import dataclasses
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _common import environment, print_table  # first: sets OMP_WAIT_POLICY

import torch

import controlfoley.sampling as sampling
from controlfoley import FoleyPipeline, from_pretrained
from controlfoley.data.extractors import synthetic_clap, synthetic_features
from controlfoley.data.synthetic import SyntheticWorld, write_clip_mp4
from controlfoley.metrics.onsets import detect_onsets
from controlfoley.metrics.scores import TOLERANCE_S

RULES = ("old", "new")
VOC_FRAMES = 128  # mel frames vocoded for the onset scores (1.49 s ending at the window's end)
LONG_S = 2 * 512 * 256 / 22050  # the `onset` windows' source clips: two windows long


# -- the two rules ------------------------------------------------------------------------------


def old_masked_count(step, n_steps, n_unknown, masked_now, schedule="cosine"):
    """`masked_count` as it was before 8c978fc: floor(N gamma(r)) clamped to [1, masked_now - 1]."""
    if step >= n_steps - 1:
        return torch.zeros_like(masked_now)
    ratio = float(sampling.mask_ratio((step + 1) / n_steps, schedule))
    target = torch.floor(n_unknown.double() * ratio).long()
    return torch.minimum(target.clamp(min=1), (masked_now - 1).clamp(min=0))


NEW_MASKED_COUNT = sampling.masked_count


@contextlib.contextmanager
def masking_rule(name: str) -> Iterator[None]:
    """Sample with the "old" (pre-8c978fc) or "new" masking clamp inside the block."""
    sampling.masked_count = old_masked_count if name == "old" else NEW_MASKED_COUNT
    try:
        yield
    finally:
        sampling.masked_count = NEW_MASKED_COUNT


def check_rules() -> None:
    """The patch reaches the sampler: N = 5 decides its last token at step 4 (old) or 11 (new)."""
    n = torch.tensor([5])
    for name, last in (("old", 4), ("new", 11)):
        with masking_rule(name):
            m, k = n.clone(), 0
            while m.item() > 1:
                m = sampling.masked_count(k, 12, n, m)
                k += 1
            while m.item() == 1:
                m = sampling.masked_count(k, 12, n, m)
                k += 1
        assert k - 1 == last, (name, k - 1)


# -- windows ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """One window: its audio, video feature rows, prompt embedding and true events (window time)."""

    index: int
    audio: torch.Tensor  # [n_samples]
    feats: dict[str, torch.Tensor]  # key -> [rows, d]
    text: torch.Tensor  # [c]
    events: list[float]  # onset times in the window, seconds


def end_cases(model, n: int) -> list[Case]:
    """Held-out test clips of exactly one window, as the model was trained."""
    world = SyntheticWorld(seed=0, duration_s=model.n_samples / model.sample_rate, sample_rate=model.sample_rate)
    clips = [world.clip(i) for i in world.split("test", n)]
    text = synthetic_clap().encode_text([c.prompt for c in clips])
    out = []
    for c, t in zip(clips, text, strict=True):
        f = synthetic_features(c)
        out.append(Case(c.index, c.audio[: model.n_samples], {"sync": f["sync"], "clip": f["clip"]}, t, [e.time_s for e in c.events]))
    return out


def onset_cases(model, n: int, col_samples: int) -> list[Case]:
    """Windows cut from 11.9 s test clips, ending at the column boundary just after a true onset
    whose flash frame lies within the window's video rows (as the pipeline slices them)."""
    world = SyntheticWorld(seed=0, duration_s=model.n_samples / model.sample_rate, sample_rate=model.sample_rate)
    sr, window_s = model.sample_rate, model.n_samples / model.sample_rate
    out: list[Case] = []
    for index in world.split("test", 10 * n):
        if len(out) == n:
            break
        clip = world.clip(index, duration_s=LONG_S)
        f = synthetic_features(clip)
        for ev in clip.events:
            end = (ev.sample(sr) // col_samples + 1) * col_samples
            start = end - model.n_samples
            if start < 0 or end > clip.audio.shape[0]:
                continue
            start_s = start / sr
            rows = {k: (round(start_s * fps), math.floor(window_s * fps + 1e-9)) for k, fps in (("sync", 24.0), ("clip", 8.0))}
            a, m = rows["sync"]
            if not a <= ev.frame(clip.fps) < a + m or rows["clip"][0] + rows["clip"][1] > f["clip"].shape[0] or a + m > f["sync"].shape[0]:
                continue  # the flash is not in the window's video rows: no rule could follow it
            inside = tuple(e for e in clip.events if start_s <= e.time_s < end / sr)
            prompt = dataclasses.replace(clip, events=inside).prompt
            feats = {k: f[k][r0 : r0 + nr] for k, (r0, nr) in rows.items()}
            out.append(Case(index, clip.audio[start:end], feats, synthetic_clap().encode_text([prompt])[0], [e.time_s - start_s for e in inside]))
            break
    if len(out) < n:
        raise SystemExit(f"found only {len(out)} onset windows in {10 * n} clips")
    return out


# -- scores -------------------------------------------------------------------------------------


def db_per_unit(model) -> float:
    """dB per unit of the normalised mel ([log_lo, log_hi] nats -> [-1, 1])."""
    return (model.mel.log_hi - model.mel.log_lo) / 2 * 20 / math.log(10)


def onset_scores(onsets: list[float], events: list[float], a: float, b: float) -> tuple[float, int, float]:
    """(recall hits, true onsets in [a, b), spurious onsets in [a, b))."""
    true_in = [t for t in events if a <= t < b]
    hits = sum(any(abs(o - t) <= TOLERANCE_S for o in onsets) for t in true_in)
    spurious = sum(1 for o in onsets if a <= o < b and not any(abs(o - t) <= TOLERANCE_S for t in events))
    return hits, len(true_in), spurious


def span_scores(model, mels: torch.Tensor, true_mel: torch.Tensor, codes: torch.Tensor, true_codes: torch.Tensor, cases: list[Case], c: int) -> list[dict]:
    """Scores of the last c columns of each window (see the module docstring)."""
    n_f, t = model.grid
    fpc = model.config.n_frames // t
    lo, hi = (t - c) * fpc, t * fpc
    hop, sr = model.mel.hop_length, model.sample_rate
    wavs = model.vocode(mels[..., -VOC_FRAMES:])
    offset = (mels.shape[-1] - VOC_FRAMES) * hop / sr
    a, b = lo * hop / sr, hi * hop / sr
    scale = db_per_unit(model)
    out = []
    for i, case in enumerate(cases):
        diff = (mels[i, :, lo:hi] - true_mel[i, :, lo:hi]) * scale
        onsets = [o + offset for o in detect_onsets(wavs[i].float(), sr)]
        hits, n_true, spurious = onset_scores(onsets, case.events, a, b)
        acc = (codes[i, :, t - c :] == true_codes[i, :, t - c :]).float().mean().item()
        out.append({"tok_acc": acc, "mel_err_db": diff.abs().mean().item(), "level_db": diff.mean().item(), "hits": hits, "n_true": n_true, "spurious": spurious})
    return out


def summarise(per_clip: list[list[dict]]) -> dict[str, tuple[float, float]]:
    """Per clip the mean over seeds, then mean and standard error over clips. Recall pools a clip's
    hits over its true onsets (NaN for a set without any)."""
    keys = ("tok_acc", "mel_err_db", "level_db", "spurious")
    rows = []
    for seeds in per_clip:
        r = {k: sum(s[k] for s in seeds) / len(seeds) for k in keys}
        n_true = sum(s["n_true"] for s in seeds)
        r["recall"] = sum(s["hits"] for s in seeds) / n_true if n_true else math.nan
        rows.append(r)
    return {k: mean_se([r[k] for r in rows]) for k in (*keys, "recall")}


def mean_se(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else math.nan
    return m, se


def cell(m: float, se: float, digits: int = 3, pct: bool = False) -> str:
    if math.isnan(m):
        return "-"
    k = 100.0 if pct else 1.0
    return f"{m * k:.{digits}f} ± {se * k:.{digits}f}" if not math.isnan(se) else f"{m * k:.{digits}f}"


def diff_cell(d: tuple[float, float], digits: int = 3, pct: bool = False) -> str:
    m, se = d
    if math.isnan(m):
        return "-"
    z = abs(m) / se if se and not math.isnan(se) and se > 0 else (0.0 if m == 0 else math.inf)
    return f"{cell(m, se, digits, pct)} ({z:.1f} SE)" if se and se > 0 else f"{cell(m, se, digits, pct)} (identical)"


# -- runs ---------------------------------------------------------------------------------------


def run_direct(model, cases: list[Case], cs: list[int], seeds: list[int], batch: int, guidance: str) -> dict:
    """{(c, rule): per-clip lists of per-seed scores, "truth", c: ..., ("differ", c): fraction, ("steps", c, rule): mean}."""
    n_f, t = model.grid
    audio = torch.stack([x.audio for x in cases])
    true_codes = model.encode_audio(audio)
    true_mel = model.mel(audio)[..., : model.config.n_frames]
    use_text = guidance != "cfg_video"
    res: dict = {}
    truth_mel = model.decode(true_codes)
    for c in cs:
        res[("truth", c)] = [[s] for s in span_scores(model, truth_mel, true_mel, true_codes, true_codes, cases, c)]
        for rule in RULES:
            res[(c, rule)] = [[] for _ in cases]
        differ, steps = [], {r: [] for r in RULES}
        for seed in seeds:
            for i in range(0, len(cases), batch):
                part = cases[i : i + batch]
                sl = slice(i, i + len(part))
                feats = {k: torch.stack([x.feats[k] for x in part]) for k in ("sync", "clip")}
                text = torch.stack([x.text for x in part]) if use_text else None
                mask = torch.ones(len(part), n_f, t, dtype=torch.bool)
                mask[..., t - c :] = False
                codes = {}
                for rule in RULES:
                    count = [0]
                    gens = [torch.Generator().manual_seed(1000 * seed + x.index % 1000) for x in part]
                    with masking_rule(rule):
                        codes[rule] = model.generate(
                            feats, text, guidance=guidance, known_codes=true_codes[sl], known_mask=mask, generator=gens,
                            callback=lambda k, n, cc, m, count=count: count.__setitem__(0, count[0] + 1),
                        )
                    steps[rule].append(count[0])
                    assert torch.equal(codes[rule][..., : t - c], true_codes[sl][..., : t - c]), "known tokens changed"
                same = (codes["old"] == codes["new"]).flatten(1).all(1)
                if 5 * c >= 12:
                    assert bool(same.all()), f"c = {c} (N = {5 * c} >= 12): the rules gave different tokens"
                differ.extend((~same).tolist())
                scored = {"old": span_scores(model, model.decode(codes["old"]), true_mel[sl], codes["old"], true_codes[sl], part, c)}
                scored["new"] = list(scored["old"])  # identical tokens: identical scores; only the rows that differ are scored again
                idx = (~same).nonzero().flatten().tolist()
                if idx:
                    sub = codes["new"][idx]
                    got = span_scores(model, model.decode(sub), true_mel[sl][idx], sub, true_codes[sl][idx], [part[j] for j in idx], c)
                    for j, g in zip(idx, got, strict=True):
                        scored["new"][j] = g
                for j in range(len(part)):
                    for rule in RULES:
                        res[(c, rule)][i + j].append(scored[rule][j])
        res[("differ", c)] = sum(differ) / len(differ)
        for rule in RULES:
            res[("steps", c, rule)] = sum(steps[rule]) / len(steps[rule])
    return res


def paired(res: dict, c: int, key: str) -> tuple[float, float]:
    """Mean +- SE over clips of the per-clip mean (new - old)."""
    diffs = []
    for old, new in zip(res[(c, "old")], res[(c, "new")], strict=True):
        if key == "recall":
            n_true = sum(s["n_true"] for s in old)
            if not n_true:
                continue
            diffs.append((sum(s["hits"] for s in new) - sum(s["hits"] for s in old)) / n_true)
        else:
            diffs.append(sum(n[key] - o[key] for o, n in zip(old, new, strict=True)) / len(old))
    return mean_se(diffs)


def run_pipeline(model, durations: list[float], seeds: list[int], guidance: str) -> list[list]:
    """Rows of the pipeline table: per duration, both rules' span scores, and the paired difference."""
    pipe = FoleyPipeline(model, progress=False)
    world = SyntheticWorld(seed=0, duration_s=model.n_samples / model.sample_rate, sample_rate=model.sample_rate)
    sr, fpc = model.sample_rate, pipe.frames_per_col
    col_s = pipe.col_samples / sr
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for j, dur in enumerate(durations):
            clip = world.clip(world.split("test", 500 + j)[-1], duration_s=dur)
            path = write_clip_mp4(clip, Path(tmp) / f"long{j}.mp4")
            streams, duration = pipe.read_features(path)
            plan = pipe.plan(duration)
            last = plan.windows[-1]
            new = pipe.window_cols - last.n_known
            c0 = last.start_col + last.n_known  # first new column of the last window
            true_mel = model.mel(clip.audio[: plan.n_samples][None])[0]
            a, b = c0 * col_s, min(duration, plan.total_cols * col_s)
            scores = {r: [] for r in RULES}
            differ = []
            for seed in seeds:
                out = {}
                for rule in RULES:
                    with masking_rule(rule):
                        out[rule] = pipe.generate_many([(streams, duration)], prompt=clip.prompt if guidance != "cfg_video" else None, seed=seed, guidance=guidance)[0]
                assert torch.equal(out["old"].codes[:, :c0], out["new"].codes[:, :c0]), "tokens before the last window's new columns differ"
                differ.append(not torch.equal(out["old"].codes, out["new"].codes))
                for rule in RULES:
                    r = out[rule]
                    hi = min(r.mel.shape[-1], true_mel.shape[-1], plan.total_cols * fpc)
                    diff = (r.mel[:, c0 * fpc : hi] - true_mel[:, c0 * fpc : hi]) * db_per_unit(model)
                    onsets = detect_onsets(r.wav.float(), sr)
                    hits, n_true, spurious = onset_scores(onsets, [e.time_s for e in clip.events], a, b)
                    scores[rule].append({"mel_err_db": diff.abs().mean().item(), "level_db": diff.mean().item(), "spurious": spurious, "hits": hits, "n_true": n_true})
            for rule in RULES:
                s = scores[rule]
                m = {k: sum(x[k] for x in s) / len(s) for k in ("mel_err_db", "level_db", "spurious")}
                n_true = sum(x["n_true"] for x in s)
                rows.append([
                    f"{duration:.3f} s, {len(plan.windows)} windows, last: {new} new col (N = {5 * new})", rule,
                    f"{100 * sum(differ) / len(differ):.0f}%", f"{m['mel_err_db']:.3f}", f"{m['level_db']:.3f}",
                    f"{m['spurious']:.2f}", f"{sum(x['hits'] for x in s)}/{n_true}" if n_true else "no true onset",
                ])  # fmt: skip
            d = mean_se([scores["new"][i]["mel_err_db"] - scores["old"][i]["mel_err_db"] for i in range(len(seeds))])
            dl = mean_se([scores["new"][i]["level_db"] - scores["old"][i]["level_db"] for i in range(len(seeds))])
            ds = mean_se([scores["new"][i]["spurious"] - scores["old"][i]["spurious"] for i in range(len(seeds))])
            rows.append(["", "new - old", "", cell(*d, 4), cell(*dl, 4), cell(*ds, 2), ""])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=16, help="windows per set (held-out test clips)")
    ap.add_argument("--seeds", type=int, default=4, help="sampling seeds per window")
    ap.add_argument("--cols", type=int, nargs="+", default=[1, 2, 3], help="new columns c (N = 5c unknown tokens)")
    ap.add_argument("--sets", nargs="+", default=["end", "onset"], choices=["end", "onset"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--guidance", default="multi", choices=["multi", "cfg_video"], help="multi: the model's multi-CFG with the clip's tags as prompt; cfg_video: no prompt (the pipeline's fallback)")
    ap.add_argument("--pipeline-durations", type=float, nargs="*", default=[28.4, 28.5], help="long videos through FoleyPipeline (none: skip)")
    ap.add_argument("--pipeline-seeds", type=int, default=2)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    print(environment(torch.device("cpu")), flush=True)
    t0, c0 = time.time(), time.process_time()
    check_rules()
    model = from_pretrained("specmaskfoley_synthetic").eval()
    col_samples = model.n_samples // model.grid[1]
    seeds = list(range(args.seeds))
    rows = []
    for name in args.sets:
        cases = end_cases(model, args.clips) if name == "end" else onset_cases(model, args.clips, col_samples)
        res = run_direct(model, cases, args.cols, seeds, args.batch, args.guidance)
        for c in args.cols:
            truth = summarise(res[("truth", c)])
            rows.append([name, f"{c} (N = {5 * c})", "true tokens", "", "", cell(*truth["tok_acc"], 1, True), cell(*truth["mel_err_db"]),
                         cell(*truth["level_db"]), cell(*truth["recall"], 1, True), cell(*truth["spurious"])])  # fmt: skip
            for rule in RULES:
                s = summarise(res[(c, rule)])
                rows.append([name, f"{c} (N = {5 * c})", rule, f"{res[('steps', c, rule)]:.1f}", "", cell(*s["tok_acc"], 1, True),
                             cell(*s["mel_err_db"]), cell(*s["level_db"]), cell(*s["recall"], 1, True), cell(*s["spurious"])])  # fmt: skip
            rows.append([name, f"{c} (N = {5 * c})", "new - old", "", f"{100 * res[('differ', c)]:.0f}%", diff_cell(paired(res, c, "tok_acc"), 1, True),
                         diff_cell(paired(res, c, "mel_err_db"), 4), diff_cell(paired(res, c, "level_db"), 4), diff_cell(paired(res, c, "recall"), 1, True),
                         diff_cell(paired(res, c, "spurious"))])  # fmt: skip
            print(f"  {name} c={c} done ({time.time() - t0:.0f} s)", flush=True)
    print(
        f"\nspecmaskfoley_synthetic, {args.guidance} (CFG 0 -> 3 over 12 steps), {args.clips} windows per set x {args.seeds} seeds; "
        "the last c columns sampled, the rest given as the true tokens. mean ± SE over windows (per-window mean over seeds); "
        "new - old: paired, (|diff| / SE); differ: (window, seed) pairs whose tokens differ between the rules"
    )
    headers = ["set", "c new cols", "rule", "steps run", "differ", "token acc %", "mel err dB", "level dB", "onset recall %", "spurious onsets"]
    print_table(headers, rows, markdown=args.markdown)
    if args.pipeline_durations:
        prow = run_pipeline(model, args.pipeline_durations, list(range(args.pipeline_seeds)), args.guidance)
        print(f"\nFoleyPipeline (rendered MP4, {args.guidance}), {args.pipeline_seeds} seeds: scores in the last window's new columns (mean over seeds); "
              "tokens before them asserted equal")  # fmt: skip
        print_table(["video", "rule", "differ", "mel err dB", "level dB", "spurious onsets", "onset hits"], prow, markdown=args.markdown)
    print(f"\nwall {time.time() - t0:.0f} s, process CPU {time.process_time() - c0:.0f} s")


if __name__ == "__main__":
    main()
