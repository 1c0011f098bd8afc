"""Fast sampling paths: the guided per-step forward, precision, and torch.compile / CUDA-graph helpers.

`GuidedStep` is the logits function that `SpecMaskFoley.generate` hands to the MaskGIT sampler.
- Every condition set of the guidance rule runs in ONE batched forward, rows laid out set by set
  ([uncond | video | text+video] for multi-CFG). The ControlNet runs on the video rows only,
  chosen by an index fixed before sampling, so a step has no data-dependent shapes and no host
  synchronisation; CUDA-graph capture needs both.
- `static_shapes=False`: the vocabulary head and the guidance combination run only on the
  still-masked positions (gathered per row, padded to the longest row). The padded length is read
  on the host once per step, and the shape changes from step to step, so this is the eager-CPU
  option; compiled and CUDA runs keep static shapes.
- `prune_rows=True`: at a step whose CFG scale is exactly 0 (the first step of the paper's linear
  0 -> 3 schedule) a rule of the form l_u + s * (...) gives l_u exactly (for finite logits), so only
  the unconditional rows run: the same tokens. With `guidance_every=N` > 1 it also decides where
  the full steps fall: the pruned step 0 computes no guidance offsets, so the first guided step
  runs in full (unpruned, step 0 would be the first full step and step 1 reuse its offsets), so the
  two give slightly different tokens there (17 of 320 in a 7-step, N = 3 probe).
- `guidance_every=N` (N > 1; an approximation, opt-in): all condition sets run at every N-th
  guided step only. At the steps between, only the rule's last condition set (the fully
  conditioned one, `anchor_rows`) runs, and each other set's logits are taken as its logits at the
  last full step plus the anchor's change since: l_i(k) ~ l_a(k) + [l_i(k0) - l_a(k0)]. For a rule
  whose combination is affine with weights summing to 1 (CFG, multi-CFG) this is the rule's value
  with the guidance term l(k0) - l_a(k0) held at its last computed value, combined at the current
  scale. The offsets are kept per position in full [b, l, v] layout, so they are there for every
  position still masked (a subset of those masked at k0). Multi-CFG on the paper preset: a full
  step runs 96 block-rows, an anchor step 36.
- `compile=True`: `torch.compile` of the batched forward; on CUDA in "reduce-overhead" mode, which
  captures CUDA graphs.

`precision(device, dtype)` is generate's autocast context: bf16 by default on CUDA, fp32 elsewhere,
and no autocast for a model whose weights are already bf16 (it runs in bf16 throughout).
It wraps the whole sampling loop so autocast's cache of cast weights lives across all steps.

`OneDNNLinear`: inference-time CPU kernels for one `generate` call.
- Every linear runs oneDNN's `_linear_pointwise`, fp32 or, under autocast, bf16 (where the CPU
  has oneDNN bf16 kernels, `onednn_dtypes()`; elsewhere bf16 runs aten's linear). fp32 would
  otherwise run MKL's sgemm, which uses its AVX2 kernels on AMD CPUs while oneDNN picks AVX-512 by
  instruction set (measured on the 2-core EPYC build machines: 100 vs 230 GFLOP/s per core for a
  795 x 768 x 3072 linear, 1.9x for a paper-size sampling run).
- Under autocast the weights are cast once per call: autocast's own cache of cast weights is off
  in inference mode and for frozen parameters, so it re-cast every weight at every step. Linears
  whose input is already low precision (attention's projection, the MLP's second linear) are
  routed too; before, they fell through to autocast and re-cast their weights.
- `fused_mlp`: a backbone MLP (linear -> GELU -> linear) asks the active mode for a fused first
  linear, GELU applied by oneDNN as a post-op on the fp32 accumulator (one rounding to bf16
  instead of two; fp32 results differ ~1e-6).
- bf16 weights, a copy in any case under autocast, are stored in oneDNN's packed (blocked) layout
  (`_reorder_linear_weight`; bit-identical products): 12-step paper-size bf16 sampling took
  6.91-7.07 s packed vs 7.22-7.35 s plain (4 runs each, alternated). A bf16 model run natively
  (`model.to(torch.bfloat16)`, no autocast) is packed the same way, a copy for the call. fp32
  weights are used as they are: packing them bought nothing measurable and would need a second
  copy of every weight.
Together these make bf16 sampling faster than plain autocast (see benchmarks/RESULTS.md). fp32
results are summed in another order than MKL's, so logits differ ~1e-6 from the aten path.
"""

import contextlib
import contextvars
import functools
import inspect
import math
import numbers
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from controlfoley._static import ModelModule
from controlfoley.backbones.base import check_logits
from controlfoley.errors import ConfigError, ShapeError
from controlfoley.guidance import CFG, UNCOND, Condition, GuidanceRule, MultiCFG, scale_at, with_scale
from controlfoley.typing import Bool, Float, Int, Tensor

__all__ = [
    "GuidedStep",
    "OneDNNLinear",
    "batched_logits",
    "default_dtype",
    "fused_mlp",
    "fuse_gelu_epilogue",
    "gelu_linear",
    "onednn_dtypes",
    "masked_index",
    "onednn_linear",
    "precision",
    "sampling_dtype",
    "scatter_positions",
    "zero_scale_conditions",
]

# Rules whose combination is l_u + s * (...): at s == 0 they return l_u unchanged.
_LINEAR_IN_SCALE = (CFG.combine, MultiCFG.combine)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def zero_scale_conditions(rule: GuidanceRule) -> tuple[Condition, ...] | None:
    """The condition sets a rule needs at scale 0 when they are fewer than all of them, else None."""
    linear = type(rule).combine in _LINEAR_IN_SCALE and "combine" not in vars(rule)
    if linear and len(rule.conditions) > 1 and rule.conditions[0] == UNCOND:
        return (UNCOND,)
    return None


def default_dtype(device: torch.device, param_dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The sampling dtype when none is asked for: a bf16 model's own dtype; otherwise bf16 on CUDA,
    fp32 elsewhere (bf16 on CPU is opt-in: it changes the sampled tokens). An fp16 model is not run
    natively: fp16 residual streams can overflow, so it gets autocast like an fp32 one."""
    if param_dtype == torch.bfloat16:
        return param_dtype
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def sampling_dtype(device: torch.device, dtype: torch.dtype | None, param_dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype generate's linears run in: `dtype`, or `default_dtype` when None; checked."""
    dt = default_dtype(device, param_dtype) if dtype is None else dtype
    if dt not in _DTYPES:
        raise ConfigError(f"dtype must be one of {[str(d) for d in _DTYPES]}, got {dt}")
    return dt


@contextlib.contextmanager
def precision(
    device: torch.device, dtype: torch.dtype | None = None, *, cache: bool = True, param_dtype: torch.dtype = torch.float32
) -> Iterator[torch.dtype]:
    """Generate's precision context; yields the dtype the linears run in.
    - `dtype=None` on a bf16 model (`model.to(torch.bfloat16)`): no autocast, every op in bf16
      (norms, residual adds and softmax too: half the activation traffic of autocast, which keeps
      them in fp32; measured faster on an H200, benchmarks/RESULTS.md).
    - otherwise autocast to `dtype` (default `default_dtype(device)`); fp32 runs without autocast.
    `cache=False` turns off autocast's cache of cast weights: a captured CUDA graph must not read
    cached casts, which autocast frees when its context ends."""
    if dtype is not None and param_dtype != torch.float32 and dtype != param_dtype:  # autocast cannot run a half model in another dtype
        raise ConfigError(
            f"dtype={dtype} on a model whose weights are {param_dtype}: it runs in {param_dtype} (leave dtype out), or convert "
            f"the model first ({'model.float()' if dtype == torch.float32 else f'model.to({dtype})'}; model.float() then dtype={dtype} autocasts)"
        )
    dt = sampling_dtype(device, dtype, param_dtype)
    if dt == torch.float32 or (dtype is None and dt == param_dtype):
        yield dt
        return
    with torch.autocast(device.type, dtype=dt, cache_enabled=cache):
        yield dt


@functools.cache
def onednn_dtypes() -> tuple[torch.dtype, ...]:
    """Dtypes this CPU runs through oneDNN's linear: fp32 always, bf16 where oneDNN has bf16 kernels
    (AVX-512 bf16 / AMX; an AVX2-only CPU has none and the op would fail). Others go to aten, with
    their weights cast once."""
    bf16 = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)



class OneDNNLinear(TorchFunctionMode):
    """Inside this mode, inference-time CPU `F.linear` calls run oneDNN kernels (under bf16 autocast
    on weights cast and packed once), and `fused_mlp` fuses the MLP's GELU into its first linear.
    Make one per sampling call: the cast weights are not refreshed if parameters change."""

    def __init__(self) -> None:
        super().__init__()
        # (id(w), id(b), dtype) -> (w kept alive so its id is not reused, weight for the op, bias)
        self._cast: dict[tuple[int, int, torch.dtype], tuple[Tensor, Tensor, Tensor | None]] = {}
        self._tokens: list[contextvars.Token[OneDNNLinear | None]] = []  # one per (nested) entry

    def __enter__(self) -> "OneDNNLinear":
        self._tokens.append(_ACTIVE.set(self))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.reset(self._tokens.pop())
        super().__exit__(*exc)

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.linear and not torch.is_grad_enabled():  # no autograd formula for the oneDNN op
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            out = self.linear(x, w, b)
            if out is not None:
                return out
        return func(*args, **kwargs)

    def _target_dtype(self, x: Tensor, w: Tensor, b: Tensor | None) -> torch.dtype | None:
        """The dtype the linear runs in, or None when this mode leaves it to aten."""
        if not (
            x.device.type == "cpu"
            and w.dtype in (torch.float32, torch.bfloat16)
            and (b is None or b.dtype == w.dtype)
            and 2 <= x.dim() <= 3
            and w.dim() == 2
        ):
            return None
        if torch.is_autocast_enabled("cpu"):
            dt = torch.get_autocast_dtype("cpu")
            return dt if w.dtype == torch.float32 and x.dtype in (torch.float32, dt) else None
        return w.dtype if x.dtype == w.dtype else None  # fp32, or a bf16 model run natively

    def _weights(self, w: Tensor, b: Tensor | None, dt: torch.dtype, rows: int, *, pack: bool) -> tuple[Tensor, Tensor | None]:
        key = (id(w), id(b), dt)
        if key not in self._cast:  # same dtype: no copy (`to` returns the parameter itself)
            lw = w.to(dt)
            if pack and dt == torch.bfloat16:  # a copy exists anyway: store it in oneDNN's blocked layout
                try:
                    lw = torch.ops.mkldnn._reorder_linear_weight(lw, rows)
                except RuntimeError:  # a oneDNN build that cannot pack bf16: the plain layout works too
                    pass
            self._cast[key] = (w, lw, None if b is None else b.to(dt))
        return self._cast[key][1:]

    def linear(self, x: Tensor, w: Tensor, b: Tensor | None, post_op: str = "none", algorithm: str = "") -> Tensor | None:
        """oneDNN linear (+ `post_op`: "gelu" with `algorithm` "none"/"tanh"), or None if this
        input is not for this mode (training, other devices or dtypes)."""
        dt = self._target_dtype(x, w, b)
        onednn = dt is not None and dt in onednn_dtypes()
        if dt is None or (not onednn and post_op != "none"):
            return None
        lw, lb = self._weights(w, b, dt, x.numel() // x.shape[-1], pack=onednn)
        x = x.to(dt)
        if onednn:
            return torch.ops.mkldnn._linear_pointwise(x, lw, lb, post_op, [], algorithm)
        return F.linear(x, lw, lb)  # fp16, or bf16 without oneDNN kernels: what autocast would run, minus the weight cast

    def mlp(self, fc1: nn.Module, act: nn.Module, fc2: nn.Module, x: Tensor) -> Tensor | None:
        """fc2(GELU(fc1(x))) with the GELU fused into fc1, or None when not applicable."""
        if torch.is_grad_enabled() or type(act) is not nn.GELU or not _plain_linear(fc1):
            return None
        h = self.linear(x, fc1.weight, fc1.bias, "gelu", act.approximate)
        return None if h is None else fc2(h)


def _plain_linear(m: nn.Module) -> TypeGuard[nn.Linear]:
    """An nn.Linear whose forward nothing else observes or changes (no subclass, no hooks), so
    reading its weight directly is what calling it would do."""
    return type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks)


_ACTIVE: contextvars.ContextVar[OneDNNLinear | None] = contextvars.ContextVar("controlfoley_onednn", default=None)


def fused_mlp(fc1: nn.Module, act: nn.Module, fc2: nn.Module, x: Tensor) -> Tensor | None:
    """The MLP through the active `OneDNNLinear` mode's fused kernels; None outside one (or when
    it does not apply: training, another activation, another device), so the caller runs eagerly."""
    mode = _ACTIVE.get()
    return None if mode is None else mode.mlp(fc1, act, fc2, x)


def gelu_linear(fc1: nn.Module, act: nn.Module, x: Tensor) -> Tensor | None:
    """GELU(fc1(x)) as ONE op, `torch._addmm_activation(bias, x, W^T, use_gelu=True)`: on CUDA a
    cuBLASLt GEMM with the bias and the GELU in its epilogue, so the (rows x 3072) activation is
    written once instead of written, read and written again. cuBLASLt's epilogue is the tanh
    approximation of GELU (at most 5e-4 from the exact one, at x = 2.7, where a bf16 step is
    0.016); on the CPU the op computes the exact GELU. None where it does not apply (training,
    autocast, a dtype mismatch, no bias, another activation, hooks), and the caller runs eagerly."""
    if (
        torch.is_grad_enabled()
        or type(act) is not nn.GELU
        or (act.approximate != "none" and x.device.type != "cuda")  # the CPU op is the exact GELU
        or not _plain_linear(fc1)
        or fc1.bias is None
        or x.dtype != fc1.weight.dtype
        or torch.is_autocast_enabled(x.device.type)
    ):
        return None
    h = torch._addmm_activation(fc1.bias, x.reshape(-1, x.shape[-1]), fc1.weight.t(), use_gelu=True)
    return h.view(*x.shape[:-1], h.shape[-1])


def fuse_gelu_epilogue(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Experimental: make every ViT block MLP of `model` (backbone and ControlNet) compute its
    first linear and GELU as one GEMM with a GELU epilogue (`gelu_linear`), in inference with a
    model whose weights are in the compute dtype (`model.to(torch.bfloat16)`). Changes `model` in
    place and returns it; `enabled=False` undoes it. Training, autocast and CPU oneDNN sampling
    keep the exact, unfused GELU.

    Aimed at batch-64 sampling on a GPU, where the separate GELU pass is the largest element-wise
    cost (benchmarks/RESULTS.md). On CUDA the GELU becomes its tanh approximation: a model change
    below bf16's resolution, but a change; `benchmarks/precision_quality.py` measures what it
    does to the output. Measured on an H100 (benchmarks/RESULTS.md, run G; paper preset, batch 64):
    88 clips/s in a CUDA graph against 81 for the plain bf16 model, 95 against 87 compiled in the
    graph, with as many tokens equal to the fp32 reference as plain bf16 (95%)."""
    from controlfoley.backbones.specmaskgit import Mlp

    mlps = [m for m in model.modules() if isinstance(m, Mlp)]
    if not mlps:
        raise ConfigError(
            f"fuse_gelu_epilogue found no controlfoley ViT MLP (controlfoley.backbones.specmaskgit.Mlp) in "
            f"{type(model).__name__}; it applies to the built-in backbones and their ControlNet copies"
        )
    for m in mlps:
        m.gelu_epilogue = bool(enabled)
    return model


def onednn_linear(device: torch.device, dtype: torch.dtype, requested: bool | None, compile: bool) -> contextlib.AbstractContextManager[Any]:
    """The `OneDNNLinear` mode when asked for; by default for eager CPU sampling with oneDNN, in
    fp32 only on AVX-512 CPUs, where oneDNN beats (AMD) or matches (Intel) MKL's sgemm. In bf16 it
    is on everywhere: without oneDNN bf16 kernels it still saves autocast's per-step weight casts."""
    have = torch.backends.mkldnn.is_available()
    if requested and not have:
        raise ConfigError("onednn=True needs a PyTorch build with oneDNN (torch.backends.mkldnn); pass onednn=False")
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    auto = have and device.type == "cpu" and not compile and (dtype != torch.float32 or avx512)
    return OneDNNLinear() if (auto if requested is None else requested) else contextlib.nullcontext()


def masked_index(mask: Bool[Tensor, "b l"]) -> Int[Tensor, "b k"]:
    """Per row the still-masked positions in position order, padded with unmasked positions up to
    the row with the most masked tokens (its length is read on the host)."""
    k = int(mask.sum(dim=1).max())
    return mask.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :k]


def scatter_positions(x: Float[Tensor, "b k v"], index: Int[Tensor, "b k"], n_tokens: int) -> Float[Tensor, "b l v"]:
    """Place per-position rows back at `index`; other positions get zeros (the sampler ignores
    the logits of known tokens, and full-size logits keep its random stream unchanged)."""
    out = x.new_zeros(x.shape[0], n_tokens, x.shape[2])
    return out.scatter_(1, index[..., None].expand(-1, -1, x.shape[2]), x)


def batched_logits(
    model: ModelModule,
    n_sets: int,
    codes: Int[Tensor, "b l"],
    mask: Bool[Tensor, "b l"],
    index: Int[Tensor, "b k"] | None,
    cond: Float[Tensor, "r c"] | None,
    cond_on: Bool[Tensor, " r"] | None,
    control: Float[Tensor, "n l d"] | None,
    control_rows: Int[Tensor, " n"] | None,
    control_scale: float = 1.0,
) -> Float[Tensor, "r k v"]:
    """Logits of `n_sets` condition sets stacked along the batch (r = n_sets * b), at `index` or at
    every position. `control` holds the aligned video of the rows `control_rows` (all rows if None);
    the ControlNet's residuals are multiplied by `control_scale`."""
    bb = model.backbone
    x = bb.embed(codes.repeat(n_sets, 1), mask.repeat(n_sets, 1), cond, cond_on)
    residuals = None
    if control is not None:
        controlnet = model.controlnet
        assert controlnet is not None  # video is encoded for a model with a ControlNet only (encode_control checks)
        net: Callable[..., list[Tensor | None]] = (
            controlnet if control_scale == 1.0 else functools.partial(controlnet, scale=control_scale)
        )
        if control_rows is None:
            residuals = net(x, control)
        else:
            part = net(x.index_select(0, control_rows), control)
            # rows without control get an exact zero residual; index_copy keeps the shapes static
            residuals = [None if r is None else x.new_zeros(x.shape).index_copy(0, control_rows, r.to(x.dtype)) for r in part]
    h = bb.forward_blocks(x, residuals)
    logits = bb.logits(h, None if index is None else index.repeat(n_sets, 1))
    positions = codes.shape[1] if index is None else index.shape[1]
    check_logits(bb, _backbone_name(model), logits, n_sets * codes.shape[0], positions, indexed=index is not None)
    return logits


def _backbone_name(model: ModelModule) -> str:
    """The registry name of `model`'s backbone, for error messages ("?" for a model without a config)."""
    part = getattr(getattr(model, "config", None), "backbone", None)
    return str(getattr(part, "name", "?"))


class _Rows:
    """Inputs of one stacked forward, prepared once before sampling (no work inside the steps)."""

    def __init__(self, kwargs: Mapping[str, Any], n_sets: int) -> None:
        self.n_sets = n_sets
        self.cond, self.cond_on = kwargs["cond"], kwargs["cond_on"]
        control, on = kwargs["control"], kwargs["control_on"]
        self.control, self.control_rows = control, None
        if control is not None and not bool(on.all()):  # one host read, before the loop
            self.control_rows = on.nonzero().squeeze(1)
            self.control = control.index_select(0, self.control_rows)


_COMPILED: dict[tuple[str | None, bool], Callable[..., Tensor]] = {}


def compiled_batched_logits(device: torch.device, static_shapes: bool, cudagraphs: bool = True) -> Callable[..., Tensor]:
    """`batched_logits` under torch.compile, built once per (mode, static) and reused, so a second
    `generate` call finds its graphs in dynamo's cache. CUDA: "reduce-overhead" (CUDA graphs of the
    forward) unless `cudagraphs=False` (the caller captures a larger graph itself)."""
    mode = "reduce-overhead" if device.type == "cuda" and cudagraphs else None
    key = (mode, static_shapes)
    if key not in _COMPILED:
        # the undecorated function: runtime type checks (CONTROLFOLEY_TYPECHECK, the test suite) wrap
        # it in beartype, which checks nothing useful on traced tensors and which torch 2.11's dynamo
        # failed to trace (benchmarks/RESULTS.md, GPU correctness)
        fn = inspect.unwrap(batched_logits)
        _COMPILED[key] = _with_room_to_recompile(_without_typechecks(torch.compile(fn, mode=mode, dynamic=False if static_shapes else None)))
    return _COMPILED[key]


# Graphs dynamo may keep for the one compiled forward. Static shapes give one graph per (batch,
# condition-set layout), two layouts per generate call (the pruned first step; three with
# guidance_every, whose reuse steps run the anchor set alone), and dynamo's
# default limit of 8 per function made the 5th batch size a process sampled with fall back to eager
# for good (measured: batch sizes 1-4 compiled, 5 and 6 eager).
RECOMPILE_LIMIT = 64


def _with_room_to_recompile(compiled: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`compiled` called with dynamo's per-function recompile limit raised to RECOMPILE_LIMIT (for
    this call only; the process-wide setting is left as it is)."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"  # torch < 2.6

    @functools.wraps(compiled)
    def call(*args: Any, **kwargs: Any) -> Any:
        with dynamo_config.patch(**{name: max(RECOMPILE_LIMIT, getattr(dynamo_config, name))}):
            return compiled(*args, **kwargs)

    return call


def _without_typechecks(compiled: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`compiled` run with jaxtyping's runtime checks switched off. They are on only in the test
    suite or with CONTROLFOLEY_TYPECHECK, and wrap every function the compiled one calls (embed,
    the blocks, ...); dynamo traces those wrappers, and under torch 2.11 on CUDA beartype's checks
    of traced tensors failed (an H100 run, 2026-11-27). Switched off for every call, not only the
    tracing one, so the guard dynamo puts on the switch always holds (`_typechecks_off`)."""

    @functools.wraps(compiled)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _typechecks_off():
            return compiled(*args, **kwargs)

    return call


_OFF_LOCK = threading.Lock()
_off_state = {"depth": 0, "before": False}


@contextlib.contextmanager
def _typechecks_off() -> Iterator[None]:
    """jaxtyping's checks off while any thread is inside; the first to enter saves the setting and
    the last to leave restores it, so two threads sampling at once cannot leave checks off (the
    switch is one process-wide flag: meanwhile, checks are off in other threads' code too)."""
    from jaxtyping import config

    with _OFF_LOCK:
        if _off_state["depth"] == 0:
            _off_state["before"] = config.jaxtyping_disable
            config.update("jaxtyping_disable", True)
        _off_state["depth"] += 1
    try:
        yield
    finally:
        with _OFF_LOCK:
            _off_state["depth"] -= 1
            if _off_state["depth"] == 0:
                config.update("jaxtyping_disable", _off_state["before"])


def checked_every(value: Any) -> int:  # a validator: it takes anything
    """guidance_every as a plain int >= 1 (numpy ints too), or a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"guidance_every must be an int >= 1 (1: every condition set at every step, the paper's sampler), got {value!r}")
    return int(value)


def _own_schedule(rule: GuidanceRule, scale: float) -> GuidanceRule | None:
    """A copy of `rule` at `scale` when its class overrides `scale_at` (a schedule of its own,
    which reads `self.scale`); None for the built-in schedules."""
    if getattr(type(rule), "scale_at", GuidanceRule.scale_at) is GuidanceRule.scale_at:
        return None
    return with_scale(rule, scale)  # its scale_at reads self.scale


class GuidedStep:
    """Guided logits for one MaskGIT step: `(codes, mask, k, n_steps) -> [b, l, v]`."""

    def __init__(
        self,
        model: ModelModule,
        rule: GuidanceRule,
        scale: float,
        rows: Mapping[str, Any],
        n_sets: int,
        *,
        zero_scale_rows: Mapping[str, Any] | None = None,
        anchor_rows: Mapping[str, Any] | None = None,
        guidance_every: int = 1,
        static_shapes: bool | None = None,
        compile: bool = False,
        captured: bool = False,
        control_scale: float = 1.0,
    ) -> None:
        device = model.device
        self.model, self.rule, self.scale = model, rule, float(scale)
        self._own_schedule = _own_schedule(rule, self.scale)
        self.control_scale = float(control_scale)  # the ControlNet's residuals times this (1: as trained)
        self.rows = _Rows(rows, n_sets)
        self.zero_rows = None if zero_scale_rows is None else _Rows(zero_scale_rows, 1)
        guidance_every = checked_every(guidance_every)
        # without anchor rows (a rule of one condition set) every step is a full one: say so, so that
        # a captured loop is keyed as the every-step loop it is
        self.every = int(guidance_every) if anchor_rows is not None else 1
        self.anchor_rows = None if (self.every == 1 or anchor_rows is None) else _Rows(anchor_rows, 1)  # (every > 1 has anchors)
        self._offsets: tuple[Tensor, ...] | None = None  # per set but the anchor: its logits minus the anchor's, [b, l, v]
        self._age = 0  # guided steps since the last one that ran every set
        if captured and static_shapes is False:
            raise ConfigError("static_shapes=False cannot be captured in a CUDA graph (its shapes change every step); drop one of them")
        self.static_shapes = bool(compile or captured or device.type == "cuda") if static_shapes is None else bool(static_shapes)
        # `captured`: the whole sampling loop is captured as one CUDA graph (controlfoley.graphs), so
        # a compiled forward must not capture graphs of its own
        self.forward = compiled_batched_logits(device, self.static_shapes, cudagraphs=not captured) if compile else batched_logits
        # CUDA graphs reuse their output buffers; each step's logits are consumed before the next
        # step, which is what marking a new step tells the graph tree
        self.mark_step = compile and not captured and device.type == "cuda"

    def scale_at(self, k: int, n_steps: int) -> float:
        """The CFG scale of step `k`: the rule's schedule at `generate`'s scale (the rule's own
        `scale_at` where it overrides it, called on a copy of the rule holding that scale)."""
        if self._own_schedule is None:
            return scale_at(k, n_steps, self.scale, self.rule.schedule)
        s = self._own_schedule.scale_at(k, n_steps)
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s):
            raise ConfigError(f"guidance {self.rule}.scale_at({k}, {n_steps}) returned {s!r}; it must return a finite number (the CFG scale of that step)")
        return float(s)

    def inputs(self) -> dict[str, Tensor]:
        """The tensors the steps read besides codes and mask (condition rows, aligned video), by name."""
        out = {}
        for prefix, rows in (("", self.rows), ("zero_", self.zero_rows), ("anchor_", self.anchor_rows)):
            for name in ("cond", "cond_on", "control", "control_rows"):
                t = None if rows is None else getattr(rows, name)
                if t is not None:
                    out[prefix + name] = t
        return out

    def _stacked(self, rows: _Rows, codes: Tensor, mask: Tensor, index: Tensor | None) -> tuple[Tensor, ...]:
        if self.mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        out = self.forward(self.model, rows.n_sets, codes, mask, index, rows.cond, rows.cond_on, rows.control, rows.control_rows, self.control_scale)
        return tuple(out.float().chunk(rows.n_sets, dim=0))

    @staticmethod
    def _full(x: Tensor, index: Tensor | None, n_tokens: int) -> Tensor:
        return x if index is None else scatter_positions(x, index, n_tokens)

    @staticmethod
    def _at(x: Tensor, index: Tensor | None) -> Tensor:
        return x if index is None else x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))

    def __call__(self, codes: Int[Tensor, "b l"], mask: Bool[Tensor, "b l"], k: int, n_steps: int) -> Float[Tensor, "b l v"]:
        s = self.scale_at(k, n_steps)
        index = None if self.static_shapes else masked_index(mask)
        if k == 0:
            self._offsets, self._age = None, 0
        if s == 0.0 and self.zero_rows is not None:
            guided = self._stacked(self.zero_rows, codes, mask, index)[0]  # l_u: the rule's value at s = 0
        else:
            if self.anchor_rows is not None and self._offsets is not None and self._age < self.every - 1:
                self._age += 1
                anchor = self._stacked(self.anchor_rows, codes, mask, index)[0]
                stacked = (*(anchor + self._at(o, index) for o in self._offsets), anchor)
            else:
                stacked = self._stacked(self.rows, codes, mask, index)
                if self.anchor_rows is not None:
                    self._age = 0
                    self._offsets = tuple(self._full(t - stacked[-1], index, codes.shape[1]) for t in stacked[:-1])
            guided = self.rule.combine(stacked, s)
            if not isinstance(guided, Tensor) or guided.shape != stacked[0].shape:  # shapes only: no host sync
                got = list(guided.shape) if isinstance(guided, Tensor) else type(guided).__name__
                raise ShapeError(
                    f"guidance {self.rule}.combine returned {got}; it must return logits shaped like each condition's, "
                    f"{list(stacked[0].shape)} ([batch, positions, vocab])"
                )
        return guided if index is None else scatter_positions(guided, index, codes.shape[1])
