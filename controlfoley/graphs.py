"""Whole-loop CUDA graphs: `SpecMaskFoley.generate(..., cuda_graph=True)`.

At batch 1 the paper-size sampler on a GPU is bound by kernel launches, not arithmetic: a step is
36 blocks of small kernels, and the host issues them slower than an H200 runs them (eager bf16:
~12 ms a step, for ~1 ms of matrix work; benchmarks/RESULTS.md). `torch.compile(mode=
"reduce-overhead")` graphs the forward only; the guidance combination and the MaskGIT update between
forwards stay eager. Here ALL steps of one sampling call (every batched guided forward, the
guidance combination, the MaskGIT updates) are captured as ONE CUDA graph and replayed.

- Static inputs: the condition rows and aligned video the steps read (`GuidedStep.inputs()`), the
  start codes and mask (known tokens), and the noise. The noise is drawn before each replay by
  `sampling.PredrawnUniforms` from the call's generator, in the order an eager call draws it, so
  the same generator gives the eager tokens (`cuda_graph=False`): exactly in fp32, at least 97% of
  them in bf16 or compiled, as tests/test_graphs.py checks on CUDA.
- One graph per (weights' storage, batch, shapes, guidance rule and scale, steps, temperature,
  dtype, compile): kept on the model (`model._cuda_graphs`, freed with it; at most `MAX_GRAPHS`
  per model, the least recently used dropped; `clear_cuda_graphs(model)` frees them now).
  Loading new weights in place (`load_state_dict`) keeps the graphs valid; moving or re-creating
  parameters drops them. Each graph holds its activations' memory and the noise of all steps
  (steps x batch x tokens x vocab fp32: ~13 MB a clip at paper size, 0.83 GB at batch 64).
- The first call of a kind runs the loop twice on a side stream (cuBLAS workspaces,
  torch.compile's warm-up) and then captures it: about three eager calls. Later calls copy the
  inputs in and replay.
- Inside a graph nothing may read the device or change shape: the built-in parts and rules do
  neither. A user part that does fails at capture with a `ConfigError` naming the way out.
- `compile=True` with `cuda_graph=True` compiles the forward without its own CUDA graphs (inductor's
  fused kernels are captured in the whole-loop graph).
"""

import contextlib
import itertools
import weakref
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from controlfoley._registry import MASK_SCHEDULES
from controlfoley._static import ModelModule
from controlfoley.errors import ConfigError
from controlfoley.fast import GuidedStep, precision, sampling_dtype
from controlfoley.guidance import fingerprint
from controlfoley.sampling import Generators, PredrawnUniforms
from controlfoley.typing import Bool, Int, Tensor

__all__ = ["MAX_GRAPHS", "SamplingGraph", "clear_cuda_graphs", "sample_graphed"]

MAX_GRAPHS = 4  # captured loops kept per model; each holds its activations' memory
# Tests on machines without a GPU set this False to run the same static-buffer loop uncaptured.
REQUIRE_CUDA = True


class SamplingGraph:
    """One sampling loop of fixed shapes and settings, captured (`capture=True`, CUDA) or, for
    tests on the CPU, run eagerly on the same static buffers (`capture=False`)."""

    def __init__(
        self,
        model: ModelModule,
        step: GuidedStep,
        codes: Int[Tensor, "b l"],
        mask: Bool[Tensor, "b l"],
        *,
        steps: int,
        temperature: float,
        dtype: torch.dtype | None,
        param_dtype: torch.dtype,
        capture: bool,
    ) -> None:
        # `step` is kept: its input tensors (`step.inputs()`) are the graph's, `load` copies into them
        self.model, self.step, self.steps, self.temperature = model, step, steps, temperature
        self.dtype, self.param_dtype = dtype, param_dtype
        self.codes, self.mask = codes.clone(), mask.clone()
        self.noise = PredrawnUniforms(steps, codes.shape[0], codes.shape[1], model.backbone.vocab_size, codes.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Tensor | None = None
        if capture:
            self._capture()

    def _run(self) -> Int[Tensor, "b l"]:
        self.noise.rewind()
        with precision(self.codes.device, self.dtype, cache=False, param_dtype=self.param_dtype):
            return self.model.sampler.loop(
                self.step, self.codes, self.mask, steps=self.steps, temperature=self.temperature, uniforms=self.noise
            )

    def _capture(self) -> None:
        device = self.codes.device
        self.noise.fill(torch.Generator(device).manual_seed(0))  # warm-up draws; each call draws its own
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # lazy initialisation (cuBLAS workspaces, compiled kernels) outside the capture
                self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # the capture stream is made on the model's device (torch's default one belongs to the
            # device current when it was first made, which may be another GPU)
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(device)):
                out = self._run()
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as e:
            raise ConfigError(
                f"cuda_graph=True: capturing the sampling loop as a CUDA graph failed ({str(e).splitlines()[0]}). "
                "Something in the model or guidance rule reads the GPU from the host or changes shape while "
                "sampling (e.g. .item(), nonzero(), a data-dependent branch). Sample with cuda_graph=False "
                "(compile=True also removes most launch overhead)."
            ) from e
        self.graph, self.out = graph, out

    def load(self, step: GuidedStep, codes: Tensor, mask: Tensor) -> None:
        """Copy a new call's inputs into the static buffers (same names and shapes: the cache key)."""
        mine = self.step.inputs()
        for name, t in step.inputs().items():
            mine[name].copy_(t)
        self.codes.copy_(codes)
        self.mask.copy_(mask)

    def __call__(self, generator: Generators) -> Int[Tensor, "b l"]:
        self.noise.fill(generator)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        assert self.out is not None
        return self.out.clone()  # the next replay overwrites the graph's output


class _Cache:
    """A model's captured loops, stored on the model (`model._cuda_graphs`): they go when it goes
    (a graph holds the model, so a cache outside it would keep every model alive). Copying or
    pickling the model gives an empty cache: graphs cannot be copied, and a copy has other weights."""

    def __init__(self) -> None:
        self.weights: tuple[Any, ...] | None = None
        self.graphs: OrderedDict[tuple[Any, ...], SamplingGraph] = OrderedDict()

    def __deepcopy__(self, memo: dict[int, Any]) -> "_Cache":
        return _Cache()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Cache, ())


_ATTR = "_cuda_graphs"
_MODELS: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # models holding a cache, for clear_cuda_graphs()


def _cache_of(model: ModelModule, create: bool = False) -> _Cache | None:
    cache = model.__dict__.get(_ATTR)
    if cache is None and create:
        cache = model.__dict__[_ATTR] = _Cache()
        _MODELS.add(model)
    return cache


def clear_cuda_graphs(model: ModelModule | None = None) -> None:
    """Free the captured sampling loops of `model` (of every model when None)."""
    for m in list(_MODELS) if model is None else [model]:
        m.__dict__.pop(_ATTR, None)
        _MODELS.discard(m)


def _weights_key(model: ModelModule) -> tuple[Any, ...]:
    """Where every parameter and buffer lives: a graph reads these addresses."""
    return tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in itertools.chain(model.parameters(), model.buffers()))


def _graph_key(model: ModelModule, step: GuidedStep, codes: Tensor, steps: int, temperature: float, dtype: Any, compile: bool) -> tuple[Any, ...]:
    """Everything besides the copied inputs that the captured loop depends on."""
    rule = step.rule
    rule_key = (type(rule), tuple(sorted((k, fingerprint(v)) for k, v in vars(rule).items())))  # a large tensor's repr is elided
    inputs = tuple((k, tuple(v.shape), v.dtype) for k, v in step.inputs().items())
    sampler = model.sampler
    # module switches a captured graph bakes in: math attention (`fused`), fc1 + GELU as one GEMM (`gelu_epilogue`)
    switches = tuple(
        (name, getattr(m, name)) for m in model.modules() for name in ("fused", "gelu_epilogue") if isinstance(getattr(m, name, None), bool)
    )
    # the schedule's function as well as its name: the masked counts are baked in, and a name may be re-registered (override=True)
    schedule = (sampler.mask_schedule, MASK_SCHEDULES.get(sampler.mask_schedule))
    return (
        tuple(codes.shape), steps, temperature, type(sampler), schedule, dtype, compile, model.training,
        step.static_shapes, step.scale, rule_key, step.rows.n_sets, step.zero_rows is not None, step.every, inputs, switches,
        step.control_scale,  # baked into the captured residuals
    )


def sample_graphed(
    model: ModelModule,
    step: GuidedStep,
    *,
    batch: int,
    known_codes: Int[Tensor, "b l"] | None,
    known_mask: Bool[Tensor, "b l"] | None,
    generator: Generators,
    steps: int | None,
    temperature: float | None,
    dtype: torch.dtype | None,
    param_dtype: torch.dtype,
    compile: bool,
) -> Int[Tensor, "b l"]:
    """`generate`'s sampling loop through a cached `SamplingGraph` (flat codes [b, l])."""
    device = model.device
    capture = device.type == "cuda"
    if REQUIRE_CUDA and not capture:
        raise ConfigError(
            f"cuda_graph=True needs the model on a CUDA device; it is on {device}. Drop cuda_graph "
            "(on the CPU generate's defaults are already the fast path) or move the model: model.to('cuda')"
        )
    sampler = model.sampler
    steps, temperature = sampler.settings(steps, temperature)
    dt = sampling_dtype(device, dtype, param_dtype)  # `dtype` itself (maybe None) is what the loop's precision gets
    codes, mask = sampler.initial(batch, model.n_tokens, model.backbone.vocab_size, device, known_codes, known_mask)
    cache = _cache_of(model, create=True)
    assert cache is not None
    weights = _weights_key(model)
    if cache.weights != weights:  # parameters moved or were replaced: old graphs read stale memory
        cache.graphs.clear()
        cache.weights = weights
    key = _graph_key(model, step, codes, steps, temperature, (dt, dtype is None), compile)
    graph = cache.graphs.get(key)
    with torch.cuda.device(device) if capture else contextlib.nullcontext():  # capture and replay on the model's GPU
        if graph is None:
            graph = SamplingGraph(
                model, step, codes, mask, steps=steps, temperature=temperature, dtype=dtype, param_dtype=param_dtype, capture=capture
            )
            cache.graphs[key] = graph
            while len(cache.graphs) > MAX_GRAPHS:
                cache.graphs.popitem(last=False)
        else:
            graph.load(step, codes, mask)
            cache.graphs.move_to_end(key)
        return graph(generator)
