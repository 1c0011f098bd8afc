"""Learning-rate rules of the training recipes.

- `scaled_lr`: LR = base_lr x batch / 256 (SpecMaskFoley sec. 4.2, after MAGE and SpecMaskGIT):
  base 1e-3 at batch 64 gives 2.5e-4.
- `WarmupCosine`: linear warm-up then cosine annealing to `min_lr` at the last step (sec. 4.2:
  2.8K warm-up steps of 140K). Steps are 0-based optimizer steps: step 0 runs at peak / warmup,
  step warmup - 1 and step warmup at the peak, step `total_steps` at `min_lr`.
The LR is a pure function of the step, so a resumed run needs no scheduler state beyond the step.
"""

import math
from dataclasses import dataclass

__all__ = ["scaled_lr", "WarmupCosine", "LR_REFERENCE_BATCH"]

LR_REFERENCE_BATCH = 256


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = LR_REFERENCE_BATCH) -> float:
    """The linear scaling rule: base_lr x batch_size / reference_batch."""
    if batch_size < 1 or reference_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got batch_size={batch_size}, reference_batch={reference_batch}")
    return base_lr * batch_size / reference_batch


@dataclass(frozen=True)
class WarmupCosine:
    """LR at optimizer step `step` (0-based): linear warm-up, then cosine down to `min_lr`."""

    peak_lr: float
    warmup_steps: int
    total_steps: int
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got {self.warmup_steps}, {self.total_steps}")
        if self.peak_lr < 0 or not 0 <= self.min_lr <= self.peak_lr:
            raise ValueError(f"need 0 <= min_lr <= peak_lr, got min_lr={self.min_lr}, peak_lr={self.peak_lr}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
