"""MaskGIT iterative parallel decoding (Chang et al. 2022; google-research/maskgit).

At step k of K, with r = (k+1)/K:
- every still-masked token is sampled from the (guided) logits;
- confidence = log p(sampled token) + temperature * (1 - r) * Gumbel noise (the "choice"
  temperature, 9.0 in SpecMaskFoley, annealed linearly to 0); tokens already known have
  confidence +inf;
- the number left masked is max(1, min(masked_now - 1, floor(N * gamma(r)))) (0 after the last
  step: with fewer unknown tokens than steps the last one waits for the last step's full CFG scale
  rather than being drawn early at a small one), N the number of tokens that were unknown at the start; the least confident are re-masked.
  gamma is the mask schedule, a function registered by name in `MASK_SCHEDULES` (cosine by default;
  linear, square, cubic, or your own), the same one the masked-token training objective draws from.

Deterministic given a `torch.Generator`, or a list of them, one per row (`Generators`): then row
i draws only from generator i, so it is the sample that generator gives at batch 1 (batch
invariance, up to the rounding of batched matrix products). Tokens given as known (inpainting, continuation of a
previous window) are never changed. Rows may start with different numbers of known tokens.

The noise is uniform draws turned into Gumbel noise, two per step in a fixed order (the [b, l, v]
sampling draw, then the [b, l] confidence draw). `PredrawnUniforms` draws all of them ahead, in
that order, into fixed buffers: a loop that reads them gives the same tokens as one that draws as
it goes, and, having no random-number calls inside, can be captured as one CUDA graph
(`controlfoley.graphs`).
"""

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from controlfoley._registry import MASK_SCHEDULES
from controlfoley.errors import ConfigError, ShapeError
from controlfoley.typing import Bool, Float, Int, Tensor

__all__ = [
    "MaskGITSampler", "get_mask_schedule", "mask_ratio", "masked_count", "cosine_schedule", "linear_schedule", "square_schedule",
    "cubic_schedule", "LogitsFn", "PredrawnUniforms", "Uniforms", "Generators", "StepCallback", "check_generators",
]  # fmt: skip

# logits_fn(codes [b, l], mask [b, l], step, n_steps) -> guided logits [b, l, v]
LogitsFn = Callable[[Tensor, Tensor, int, int], Tensor]
# uniforms(shape) -> float32 uniform [0, 1) draws of that shape (the sampler's only randomness)
Uniforms = Callable[[torch.Size], Tensor]
# callback(step, n_steps, codes [b, l], mask [b, l]) after each step run: the tokens so far, True where still masked
StepCallback = Callable[[int, int, Tensor, Tensor], None]
# the sampler's noise source: one generator for the whole batch, one per row, or the global one (None)
Generators = torch.Generator | Sequence[torch.Generator] | None


def check_generators(generator: Any, batch: int | None, device: torch.device | str) -> Generators:  # a validator: it takes anything
    """`generator` checked for a batch of `batch` rows on `device`: None, a torch.Generator, or a
    list/tuple of exactly `batch` of them (one per row; any length for batch None); each on the
    device's type. Returns it, a list as a tuple."""
    device = torch.device(device)
    if generator is None or isinstance(generator, torch.Generator):
        gens: list[Any] = [] if generator is None else [generator]
    elif isinstance(generator, Sequence) and not isinstance(generator, (str, bytes)):
        gens = list(generator)
        bad = [type(g).__name__ for g in gens if not isinstance(g, torch.Generator)]
        if bad:
            raise ConfigError(f"generator: a list must hold torch.Generator objects, one per row; got {', '.join(sorted(set(bad)))}")
        if batch is not None and len(gens) != batch:
            raise ConfigError(
                f"generator: a list needs one torch.Generator per row of the batch ({batch}), got {len(gens)}; "
                "pass one generator for the whole batch, or one per row"
            )
    else:
        seed = generator if isinstance(generator, numbers.Integral) and not isinstance(generator, bool) else "SEED"
        raise ConfigError(
            f"generator must be a torch.Generator, a list of them (one per row) or None, got {type(generator).__name__}; "
            f"for a seed pass generator=torch.Generator({str(device)!r}).manual_seed({seed})"
        )
    for g in gens:
        if g.device.type != device.type:
            raise ConfigError(
                f"generator is on {g.device.type} but the model samples on {device}: make it there, "
                f"torch.Generator({device.type!r}).manual_seed(SEED)"
            )
    return generator if generator is None or isinstance(generator, torch.Generator) else tuple(generator)


def draw_uniform(shape: torch.Size, generator: Generators, device: torch.device, out: Tensor | None = None) -> Tensor:
    """float32 uniform [0, 1) draws of `shape` from `generator`; with one generator per row, row i
    (the first dimension) comes from generator i alone. Written into `out` when given."""
    if out is None:
        out = torch.empty(shape, device=device, dtype=torch.float32)
    if generator is None or isinstance(generator, torch.Generator):
        return out.uniform_(0.0, 1.0, generator=generator)
    if len(generator) != shape[0]:
        raise ShapeError(f"{len(generator)} generators for {shape[0]} rows: give one per row")
    for row, g in zip(out, generator, strict=True):
        row.uniform_(0.0, 1.0, generator=g)
    return out


# -- mask schedules ------------------------------------------------------------------------------
# gamma(r): the fraction of tokens still masked at progress r in [0, 1], for a float r (the sampler's
# (k + 1) / K) and for a Tensor of them (the training mask's draws). gamma(0) = 1, gamma(1) = 0,
# non-increasing. MaskGIT's ablation of mask schedules (Chang et al. 2022) compares cosine, square,
# cubic, linear, square root, log and exp; cosine is its default and SpecMaskFoley's. Register your
# own with @controlfoley.MASK_SCHEDULES.register(name) and name it in SamplerConfig.mask_schedule.


@MASK_SCHEDULES.register("cosine")
def cosine_schedule(r: float | Tensor) -> float | Tensor:
    """cos(pi/2 r), MaskGIT's and SpecMaskFoley's schedule: few tokens are decided in the first steps."""
    return torch.cos(math.pi / 2 * r) if isinstance(r, Tensor) else math.cos(math.pi / 2 * r)


@MASK_SCHEDULES.register("linear")
def linear_schedule(r: float | Tensor) -> float | Tensor:
    """1 - r: the same number of tokens decided at every step."""
    return 1.0 - r


@MASK_SCHEDULES.register("square")
def square_schedule(r: float | Tensor) -> float | Tensor:
    """1 - r^2: concave, between linear and cubic (MaskGIT's ablation)."""
    return 1.0 - r**2


@MASK_SCHEDULES.register("cubic")
def cubic_schedule(r: float | Tensor) -> float | Tensor:
    """1 - r^3: concave, the fewest tokens decided early of the built-ins (MaskGIT's ablation)."""
    return 1.0 - r**3


_RULE = "gamma(0) = 1, gamma(1) = 0, non-increasing in between and within [0, 1]"
_CHECK_POINTS = tuple(i / 16 for i in range(17))  # r where a schedule is checked (exact in binary)
_CHECK_TOL = 1e-6


def get_mask_schedule(name: str) -> Callable[[float | Tensor], float | Tensor]:
    """The mask schedule registered as `name` (`MASK_SCHEDULES`), checked: on floats and on a Tensor,
    at r = 0, 1/16, ..., 1, it must give gamma(0) = 1, gamma(1) = 0, non-increasing values in
    [0, 1]. An unknown name is a RegistryError listing the registered ones; a schedule that breaks
    the rule is a ConfigError naming it and the rule. The check runs once per function registered."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a mask schedule is the name of one in controlfoley.MASK_SCHEDULES (e.g. 'cosine'), got {name!r}")
    gamma = MASK_SCHEDULES.get(name)
    if _CHECKED.get(name) is not gamma:  # first use, or the name re-registered (override=True)
        with torch.device("cpu"):  # under any default device (meta cannot be read back): the schedule's own tensors too
            _check_schedule(name, gamma)
        _CHECKED[name] = gamma
    return gamma


_CHECKED: dict[str, Callable[..., Any]] = {}  # name -> the function last checked under it


def _check_schedule(name: str, gamma: Callable[..., Any]) -> None:
    where = f"mask schedule {name!r} ({getattr(gamma, '__module__', '?')}.{getattr(gamma, '__qualname__', repr(gamma))})"
    fix = f"gamma(r) is the fraction of tokens still masked at progress r, so {_RULE}; fix the function registered as {name!r}"
    values: list[float] = []
    for r in _CHECK_POINTS:
        try:
            v = float(gamma(r))
        except Exception as e:  # noqa: BLE001  a user function: named with its error
            raise ConfigError(f"{where} failed at r = {r}: {type(e).__name__}: {e}; it must take a float r in [0, 1]") from e
        if not math.isfinite(v) or not -_CHECK_TOL <= v <= 1.0 + _CHECK_TOL:
            raise ConfigError(f"{where} gives gamma({r}) = {v:.6g}, outside [0, 1]; {fix}")
        if values and v > values[-1] + _CHECK_TOL:
            raise ConfigError(f"{where} increases: gamma({_CHECK_POINTS[len(values) - 1]}) = {values[-1]:.6g} < gamma({r}) = {v:.6g}; {fix}")
        values.append(v)
    if abs(values[0] - 1.0) > _CHECK_TOL or abs(values[-1]) > _CHECK_TOL:
        raise ConfigError(f"{where} gives gamma(0) = {values[0]:.6g} and gamma(1) = {values[-1]:.6g}; {fix}")
    rs = torch.tensor(_CHECK_POINTS, dtype=torch.float32)
    try:
        out = gamma(rs)
    except Exception as e:  # noqa: BLE001  a user function: named with its error
        raise ConfigError(
            f"{where} failed on a Tensor of ratios: {type(e).__name__}: {e}; it must take a Tensor as well as a float "
            "(the training mask draws one ratio per clip): use torch functions, e.g. torch.cos, for tensors"
        ) from e
    if not isinstance(out, Tensor) or out.shape != rs.shape:
        got = f"a Tensor of shape {list(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(
            f"{where} must map a Tensor of ratios to a Tensor of the same shape (the training mask draws one ratio per "
            f"clip); for shape {list(rs.shape)} it gave {got}: use torch functions, e.g. torch.cos, on tensors"
        )
    if not torch.allclose(out.double(), torch.tensor(values, dtype=torch.float64, device=out.device), atol=1e-4):
        shown = ", ".join(f"{float(a):.4g} (float: {b:.4g})" for a, b in zip(out.tolist(), values, strict=True))
        raise ConfigError(f"{where} gives other values on a Tensor of ratios than on floats at r = 0, 1/16, ..., 1: {shown}; {fix}")


def mask_ratio(r: float | Tensor, schedule: str = "cosine") -> float | Tensor:
    """gamma(r): fraction of tokens still masked at progress r in [0, 1], by the schedule registered
    as `schedule` in `MASK_SCHEDULES`."""
    return get_mask_schedule(schedule)(r)


def masked_count(step: int, n_steps: int, n_unknown: Int[Tensor, " b"], masked_now: Int[Tensor, " b"], schedule: str = "cosine") -> Int[Tensor, " b"]:
    """How many tokens stay masked after `step` (exact integer rule of the reference decoder)."""
    if step >= n_steps - 1:
        return torch.zeros_like(masked_now)
    ratio = float(mask_ratio((step + 1) / n_steps, schedule))
    if n_unknown.device.type == "mps":  # no float64 on Apple GPUs: the same exact rule on the host
        target = torch.floor(n_unknown.cpu().double() * ratio).long().to(n_unknown.device)
    else:
        target = torch.floor(n_unknown.double() * ratio).long()
    # google-research/maskgit: max(1, min(masked_now - 1, target)): when the two bounds cross (one token
    # masked before the last step) it stays masked, and is decided at the last step; never more than masked_now
    return torch.minimum(torch.minimum(target, masked_now - 1).clamp(min=1), masked_now)


def _gumbel(shape: torch.Size, generator: Generators, device: torch.device, uniforms: Uniforms | None = None) -> Tensor:
    u = draw_uniform(shape, generator, device) if uniforms is None else uniforms(shape)
    u = u.clamp(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


class PredrawnUniforms:
    """The sampler's uniform draws for `steps` steps of a [batch, n_tokens] x vocab problem, drawn
    ahead into fixed buffers by `fill(generator)` in the order the sampler asks for them, then
    handed out in that order (`rewind()` before each sampling loop). The buffers never move, so a
    captured CUDA graph reads each call's new draws; the numbers equal those of drawing as it goes."""

    def __init__(self, steps: int, batch: int, n_tokens: int, vocab_size: int, device: torch.device) -> None:
        self.vocab = torch.empty(steps, batch, n_tokens, vocab_size, device=device)
        self.conf = torch.empty(steps, batch, n_tokens, device=device)
        self._next = 0

    def fill(self, generator: Generators) -> None:
        """Draw every step's noise, in the sampler's order (per step: sampling, then confidence);
        one generator per row draws that row's noise."""
        for k in range(self.vocab.shape[0]):
            draw_uniform(self.vocab[k].shape, generator, self.vocab.device, out=self.vocab[k])
            draw_uniform(self.conf[k].shape, generator, self.conf.device, out=self.conf[k])

    def rewind(self) -> None:
        self._next = 0

    def __call__(self, shape: torch.Size) -> Tensor:
        k, which = divmod(self._next, 2)
        if k >= self.vocab.shape[0]:
            raise ShapeError(f"the sampler asked for noise of step {k}, but only {self.vocab.shape[0]} steps were drawn")
        buf = (self.vocab if which == 0 else self.conf)[k]
        if buf.shape != shape:
            raise ShapeError(f"the sampler asked for noise of shape {list(shape)}, the drawn noise is {list(buf.shape)}")
        self._next += 1
        return buf


class MaskGITSampler:
    """Iterative parallel decoding over a flat sequence of `n_tokens` codes."""

    def __init__(self, steps: int = 12, temperature: float = 9.0, mask_schedule: str = "cosine") -> None:
        if steps < 1:
            raise ShapeError(f"steps must be >= 1, got {steps}")
        get_mask_schedule(mask_schedule)  # registered, and keeping the rule: refused here, not while sampling
        self.steps, self.temperature, self.mask_schedule = int(steps), float(temperature), mask_schedule

    def __repr__(self) -> str:
        return f"MaskGITSampler(steps={self.steps}, temperature={self.temperature}, mask_schedule={self.mask_schedule!r})"

    @torch.no_grad()
    def sample(
        self,
        logits_fn: LogitsFn,
        *,
        batch: int,
        n_tokens: int,
        vocab_size: int,
        device: torch.device | str = "cpu",
        known_codes: Int[Tensor, "b l"] | None = None,
        known_mask: Bool[Tensor, "b l"] | None = None,
        generator: Generators = None,
        steps: int | None = None,
        temperature: float | None = None,
        callback: StepCallback | None = None,
    ) -> Int[Tensor, "b l"]:
        steps, temperature = self.settings(steps, temperature)
        device = torch.device(device)
        codes, mask = self.initial(batch, n_tokens, vocab_size, device, known_codes, known_mask)
        return self.loop(logits_fn, codes, mask, steps=steps, temperature=temperature, generator=generator, callback=callback)

    def settings(self, steps: Any, temperature: Any) -> tuple[int, float]:  # a validator: it takes anything
        """(steps, temperature) with the sampler's own values for None, checked: steps an int >= 1,
        temperature a finite number >= 0 (0: greedy choice)."""
        steps = self.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ConfigError(f"steps must be an int >= 1, got {steps!r}")
        temperature = self.temperature if temperature is None else temperature
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature < 0:
            raise ConfigError(f"temperature must be a finite number >= 0 (0: greedy choice), got {temperature!r}")
        return int(steps), float(temperature)

    def loop(
        self,
        logits_fn: LogitsFn,
        codes: Int[Tensor, "b l"],
        mask: Bool[Tensor, "b l"],
        *,
        steps: int,
        temperature: float,
        generator: Generators = None,
        uniforms: Uniforms | None = None,
        callback: StepCallback | None = None,
    ) -> Int[Tensor, "b l"]:
        """The decoding loop from a start (`initial`); noise from `generator`, or from `uniforms`
        (e.g. `PredrawnUniforms`). Leaves `codes` and `mask` unchanged. `callback(k, steps, codes,
        mask)` runs after each step (not after the steps skipped once nothing is masked)."""
        n_unknown = mask.sum(dim=1)
        # On CUDA the loop never reads the device (CUDA-graph and stream friendly): a step with
        # nothing masked leaves codes and mask unchanged, so running it instead of stopping is exact.
        read_device = codes.device.type != "cuda"
        for k in range(steps):
            if read_device and not mask.any():
                break
            logits = logits_fn(codes, mask, k, steps)
            codes, mask = self.step(logits, codes, mask, n_unknown, k, steps, temperature, generator, uniforms)
            if callback is not None:
                callback(k, steps, codes, mask)
        return codes

    @staticmethod
    def initial(
        batch: int,
        n_tokens: int,
        vocab_size: int,
        device: torch.device,
        known_codes: Tensor | None,
        known_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Start of decoding: (codes, mask), every token masked except the known ones (checked)."""
        codes = torch.zeros(batch, n_tokens, dtype=torch.long, device=device)
        mask = torch.ones(batch, n_tokens, dtype=torch.bool, device=device)
        if known_mask is None:
            if known_codes is not None:
                raise ShapeError("known_codes given without known_mask: say which tokens are known")
            return codes, mask
        if known_codes is None:
            raise ShapeError("known_mask given without known_codes: pass the tokens to keep as known_codes")
        if known_codes.shape != (batch, n_tokens) or known_mask.shape != (batch, n_tokens):
            raise ShapeError(
                f"known_codes and known_mask must both be [{batch}, {n_tokens}] (flat token sequences), "
                f"got {list(known_codes.shape)} and {list(known_mask.shape)}"
            )
        known = known_codes[known_mask].long()  # int64 first: 256 overflows a uint8 comparison
        if known.numel() and (known.min() < 0 or known.max() >= vocab_size):
            raise ShapeError(f"known token ids must be in [0, {vocab_size}), got range [{known.min()}, {known.max()}]")
        codes = torch.where(known_mask.to(device), known_codes.to(device).long(), codes)
        return codes, ~known_mask.to(device)

    def step(
        self,
        logits: Float[Tensor, "b l v"],
        codes: Int[Tensor, "b l"],
        mask: Bool[Tensor, "b l"],
        n_unknown: Int[Tensor, " b"],
        k: int,
        n_steps: int,
        temperature: float,
        generator: Generators,
        uniforms: Uniforms | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One decoding step: sample masked tokens, keep the confident ones, re-mask the rest."""
        logits = logits.float()
        logp = logits.log_softmax(dim=-1)
        sampled = (logp + _gumbel(logp.shape, generator, logp.device, uniforms)).argmax(dim=-1)  # Gumbel-max = categorical
        sampled = torch.where(mask, sampled, codes)
        conf = logp.gather(-1, sampled[..., None]).squeeze(-1)
        r = (k + 1) / n_steps
        conf = conf + temperature * (1.0 - r) * _gumbel(conf.shape, generator, conf.device, uniforms)
        # known and decided tokens are never re-masked: +inf, and a NaN confidence (non-finite guided logits, e.g. inf - inf
        # of a bf16 overflow) counts as the least confident, not as above +inf, where argsort puts NaN
        conf = torch.where(mask, torch.where(conf.isnan(), -math.inf, conf), math.inf)
        n_next = masked_count(k, n_steps, n_unknown, mask.sum(dim=1), self.mask_schedule)
        ranks = conf.argsort(dim=-1, stable=True).argsort(dim=-1)
        return sampled, ranks < n_next[:, None]
