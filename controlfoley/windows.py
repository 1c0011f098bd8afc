"""Generation windows for clips longer than the model's window, and the crossfade that joins them.

Features
- Windows (`plan_windows`): the model generates `T` token columns (`model.n_samples` samples) at a
  time. A clip needing C > T columns is covered by windows starting every T - round(overlap * T)
  columns (overlap 0.25 by default), the last one moved back to end exactly at column C so that no
  window runs past the video by more than one column. Window w > 0 is sampled with its first columns
  (those the previous window generated) given as known tokens: MaskGIT inpainting continues the
  previous window instead of starting afresh, and known tokens are never changed.
- `crossfade_join`: each window's mel placed at its first column; the columns a window shares with
  the previous one are blended with a raised-cosine ramp.

Used by `controlfoley.pipeline` (which re-exports these names); reference: MaskGIT inpainting
(Chang et al. 2022, sec. 3.2 / image extrapolation).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from controlfoley.config import ConfigError
from controlfoley.errors import ShapeError
from controlfoley.typing import Float, Tensor

__all__ = ["Window", "WindowPlan", "plan_windows", "crossfade_join"]


@dataclass(frozen=True)
class Window:
    """One generation window: `n_known` leading columns are copied from the previous window."""

    index: int
    start_col: int
    n_known: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class WindowPlan:
    n_samples: int  # output length: the video's duration in samples
    sample_rate: int
    window_cols: int  # T, token columns per window
    col_samples: int  # audio samples per token column
    windows: tuple[Window, ...]

    @property
    def total_cols(self) -> int:
        return self.windows[-1].start_col + self.window_cols

    @property
    def window_s(self) -> float:
        return self.window_cols * self.col_samples / self.sample_rate

    def feature_rows(self, window: Window, fps: float, n_rows: int) -> slice:
        """Rows of a feature stream at `fps` that condition `window` (start rounded to a row)."""
        start = round(window.start_s * fps)
        return slice(start, start + n_rows)


def plan_windows(duration_s: float, *, sample_rate: int, window_cols: int, col_samples: int, overlap: float = 0.25) -> WindowPlan:
    """Windows of `window_cols` token columns covering `duration_s` (see the module docstring)."""
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ShapeError(f"duration must be positive, got {duration_s}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap is a fraction of the window in [0, 1), got {overlap}")
    n_samples = max(1, round(duration_s * sample_rate))
    needed = math.ceil(n_samples / col_samples)
    hop = window_cols - min(window_cols - 1, round(overlap * window_cols))
    starts = list(range(0, max(1, needed - window_cols), hop))
    if needed > window_cols:  # the range stops short of needed - window_cols: the last window ends with the video
        starts.append(needed - window_cols)
    col_s = col_samples / sample_rate
    windows = tuple(
        Window(i, s, 0 if i == 0 else starts[i - 1] + window_cols - s, s * col_s, (s + window_cols) * col_s)
        for i, s in enumerate(starts)
    )
    return WindowPlan(n_samples, sample_rate, window_cols, col_samples, windows)


def crossfade_join(
    mels: Sequence[Float[Tensor, "m n"]], plan: WindowPlan, frames_per_col: int
) -> Float[Tensor, "m total"]:
    """Place each window's mel at its column; blend the shared columns with a raised-cosine ramp."""
    out = mels[0].new_zeros(mels[0].shape[0], plan.total_cols * frames_per_col)
    for w, mel in zip(plan.windows, mels, strict=True):
        a, k = w.start_col * frames_per_col, w.n_known * frames_per_col
        if k:
            ramp = 0.5 - 0.5 * torch.cos(torch.linspace(0.0, math.pi, k + 2, dtype=mel.dtype, device=mel.device)[1:-1])
            out[:, a : a + k] = out[:, a : a + k] * (1 - ramp) + mel[:, :k] * ramp
        out[:, a + k : a + mel.shape[1]] = mel[:, k:]
    return out
