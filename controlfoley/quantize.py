"""FP8 (e4m3) linears for sampling: `quantize_fp8(model)`. EXPERIMENTAL and opt-in: nothing in the
library uses it by default, and the pipeline and `generate` do not offer it. On an H100
(benchmarks/RESULTS.md, 2026-11-27) the default row-wise scales are slower than bf16 in every
setting measured; `granularity="static"` on a bf16 model, compiled, with the whole loop in a CUDA
graph, is the fastest batch-64 path measured: 107-108 clips/s against 87 for bf16 (run G), at the
cost of more changed tokens (83% equal to the fp32 reference against 95% for bf16, random
weights). `controlfoley bench --precision fp8 --compile --cuda-graph` times it (112 clips/s at batch
64 on an H200, run H). At batch 1 it does not pay: 38.9 ms compiled in the graph against 36.3 for
the bf16 model (H200, run H).

Why it was tried: at batch 64 the paper-size sampler spends half its GPU time in the matrix
products of the transformer blocks, near the card's bf16 peak, and fp8 tensor cores measured 1.75x
that peak (1351-1380 vs 769 TFLOP/s on the H100, 1.76-1.79x). `quantize_fp8` swaps every `nn.Linear` inside
the blocks (backbone and ControlNet copy: attention qkv / projection, MLP fc1 / fc2) for an
`Fp8Linear`:
- weights stored once in float8_e4m3fn with a scale per output channel ("row") or one scale
  ("tensor");
- activations quantized on the fly, per row (one scale per token) or per tensor, with
  power-of-two scales: the multiply by 1 / scale is exact in bf16 and fp32, so the largest value
  lands on at most 448 (e4m3's largest) and nothing saturates;
- the product by `torch._scaled_mm` (cuBLASLt / CUTLASS fp8 kernels on CUDA), bias added in its
  epilogue, output in bf16.

What was measured (H100, paper preset, batch 64, 12 steps): the matrix products took 0.284 s
with the block linears in fp8 against 0.395 s all in bf16, but quantizing the activations cost more than that. Eagerly it is three extra
passes over every linear's input (0.46 s); compiled, inductor fuses it into the layer norms
cheaply but makes the MLP's GELU + quantize a looping reduction over the 3072-wide rows, 0.236 s
against 0.085 s for the bf16 GELU. Net: 1.11 vs 0.80 s (CUDA graph) and 0.77 vs 0.73 s (compiled),
with 83% of tokens equal to the fp32 reference against 95% for bf16. What would make it pay: the
quantization fused into the kernels that produce each input (layer norm, GELU, attention output),
not a separate pass.

`granularity="static"` (added after those measurements; timed in run G: 0.595 s per batch-64 call
compiled in a graph, 0.958 s eager in a graph) is built for that fusion: x's scale is a fixed power of two from a bound that no input can exceed, computed from the
block's weights (`block_input_bounds`: a layer norm's output is bounded by sqrt(d - 1) |gamma| +
|beta|; a linear of it by Cauchy-Schwarz; attention's output by the value projection's bound;
GELU's by its input's). Quantizing is then one multiply and cast with no reduction over x, which
torch.compile folds into the layer norm / GELU / attention-output kernel. Because e4m3 is a
floating-point format, a bound a few times above the typical maximum costs a few of its ~15
binades of range, not precision. `benchmarks/gpu_check.sh` times it by default (steps 2, 3, 5, 6).

Everything else (embeddings, layer norms, attention itself, the vocabulary head, the ControlNet's
zero linears, tokenizer, vocoder) keeps its dtype. A quantized model is a lossy copy for sampling
only: it cannot be trained or saved; quantize after loading.

Hardware: fp8 matrix products need an NVIDIA GPU of compute capability 8.9 or later (Ada, Hopper,
Blackwell). PyTorch's CPU kernel also runs (the tests use it), but it is slower than fp32 there;
where torch's CPU kernel takes one scale per operand (torch 2.11; 2.14's takes per-row scales),
"row" scales are computed by an fp32 emulation of the same product (`_emulated_scaled_mm`).
"""

import math
from collections.abc import Iterable
from typing import cast

import torch
from torch import nn

from controlfoley.errors import ConfigError
from controlfoley.typing import Float, Tensor

__all__ = ["Fp8Linear", "quantize_fp8", "is_quantized", "FP8_GRANULARITIES", "fp8_supported", "block_input_bounds"]

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
FP8_GRANULARITIES = ("row", "tensor", "static")
_BOUND_MARGIN = 1.05  # bf16 / fp32-accumulation rounding of each bounded quantity itself
_ROUND = 2.0**-4  # relative rounding of one fp8 e4m3 value (3 mantissa bits); covers bf16's 2^-9 too
_TINY = 2.0**-100  # floor of an all-zero row's scale (any power of two works: its products are 0)


def _pow2_scale(amax: Tensor) -> Tensor:
    """The smallest power of two s with amax / s <= FP8_MAX, as fp32."""
    return torch.exp2(torch.ceil(torch.log2(amax.float().clamp(min=_TINY) / FP8_MAX)))


def fp8_supported(device: torch.device | str) -> bool:
    """Whether `device` runs fp8 matrix products: CUDA of compute capability >= 8.9, or the CPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return False


def _probe_cpu_rowwise() -> bool:
    """Whether the CPU `_scaled_mm` takes a scale per row: torch 2.14's does, 2.11's takes one per
    operand ("Now _scaled_mm only supports per-tensor scaling for CPU backend"). Every tensor's
    dtype and device given, so a default dtype or device (torch.device("meta") as a context, say)
    does not change the answer; any failure means no."""
    cpu = torch.device("cpu")
    a = torch.ones(16, 16, dtype=FP8, device=cpu)
    scale_a, scale_b = torch.ones(16, 1, dtype=torch.float32, device=cpu), torch.ones(1, 16, dtype=torch.float32, device=cpu)
    try:
        torch._scaled_mm(a, a.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)
    except Exception:
        return False
    return True


_CPU_ROWWISE = _probe_cpu_rowwise()  # once, at import: a compiled forward (or an unpickled Fp8Linear's first) reads a settled flag


def _emulated_scaled_mm(xq: Tensor, wq_t: Tensor, scale_a: Tensor, scale_b: Tensor, bias: Tensor | None) -> Tensor:
    """What `_scaled_mm` computes, in fp32 on the CPU: products of fp8 values are exact in fp32, the
    sums are accumulated in fp32 as the kernel's are, then the scales, the bias and the bf16 output."""
    with torch.autocast(xq.device.type, enabled=False):  # fp32 as written: fp16 autocast would overflow at 448 x 448 x K
        y = (xq.float() @ wq_t.float()) * scale_a * scale_b
    return (y if bias is None else y + bias.float()).to(torch.bfloat16)


class Fp8Linear(nn.Module):
    """`y = x W^T + b` with W in float8_e4m3fn and x quantized per call; inference only.

    Build it from a linear with `Fp8Linear.from_linear(linear, granularity)`. Buffers:
    `weight` [out, in] fp8, `weight_scale` fp32 ([1, out] for "row", a scalar otherwise),
    `bias` [out] bf16 or None, and for "static" `input_scale` (a scalar): x is quantized with a
    fixed power-of-two scale, no reduction over x, so quantizing is one element-wise step that
    torch.compile fuses into the op producing x (see `block_input_bounds`)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, granularity: str = "row", device: torch.device | None = None) -> None:
        super().__init__()
        if granularity not in FP8_GRANULARITIES:
            raise ConfigError(f"fp8 granularity must be one of {FP8_GRANULARITIES}, got {granularity!r}")
        if in_features % 16 or out_features % 16:
            raise ConfigError(
                f"fp8 linears need in and out features that are multiples of 16 (the fp8 kernels' tile), "
                f"got {in_features} -> {out_features}; leave this layer unquantized"
            )
        self.in_features, self.out_features, self.granularity = in_features, out_features, granularity
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=FP8, device=device))
        shape = (1, out_features) if granularity == "row" else ()
        self.register_buffer("weight_scale", torch.ones(shape, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.bfloat16, device=device) if bias else None)
        static = granularity == "static"
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device) if static else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, granularity: str = "row", *, input_bound: float | None = None) -> "Fp8Linear":
        """`input_bound` ("static" only, required there): a bound on |x| that no input exceeds."""
        w = linear.weight.detach()
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, granularity=granularity, device=w.device)
        amax = w.abs().amax(dim=1, keepdim=True) if granularity == "row" else w.abs().amax()
        scale = _pow2_scale(amax)  # [out, 1] or scalar
        q.weight.copy_((w.float() / scale).to(FP8))
        q.weight_scale.copy_(scale.reshape(q.weight_scale.shape))
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach())
        if granularity == "static":
            if input_bound is None or not math.isfinite(input_bound) or input_bound <= 0:
                raise ConfigError(f"static fp8 scales need a finite positive bound on the input, got {input_bound}")
            q.input_scale.copy_(_pow2_scale(torch.tensor(input_bound * _BOUND_MARGIN)))
        elif input_bound is not None:
            raise ConfigError(f"input_bound is for granularity 'static' only, not {granularity!r}")
        return q

    def forward(self, x: Float[Tensor, "*lead i"]) -> Float[Tensor, "*lead o"]:
        if torch.is_grad_enabled() and x.requires_grad:
            raise ConfigError(
                "Fp8Linear is for sampling only (no gradients through fp8 products); train the bf16/fp32 model "
                "and quantize a copy for sampling (controlfoley.quantize.quantize_fp8)"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.input_scale is not None:  # "static": fixed, no pass over x to find it
            scale = self.input_scale
        elif self.granularity == "row":
            scale = _pow2_scale(torch.linalg.vector_norm(x2, ord=float("inf"), dim=1, keepdim=True))  # one pass: max |x| per row
        else:
            scale = _pow2_scale(torch.linalg.vector_norm(x2, ord=float("inf")))
        # exact: a power-of-two multiply, in x's dtype for bf16 / fp32 (their exponent range holds
        # 1 / scale); fp16's does not (1 / scale overflows for rows below ~0.007), so fp16 goes via fp32
        xs = x2.float() if x2.dtype == torch.float16 else x2
        xq = (xs * scale.reciprocal().to(xs.dtype)).to(FP8)
        if x2.device.type == "cpu" and self.granularity == "row" and not _CPU_ROWWISE:
            y = _emulated_scaled_mm(xq, self.weight.t(), scale, self.weight_scale, self.bias)  # e.g. torch 2.11 on the CPU
        else:
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=self.bias, out_dtype=torch.bfloat16)
        y = y.reshape(*lead, self.out_features)
        # the dtype an nn.Linear would give: autocast's inside autocast, else x's
        dev = x.device.type
        want = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        return y if want == torch.bfloat16 else y.to(want)

    def _apply(self, fn, recurse=True):  # unannotated: nn.Module's own signature
        """`.to(device)` moves the buffers; a dtype cast (`model.to(torch.bfloat16)`, `.half()`),
        which would turn the fp8 weight into bf16, is undone: every fp8 value survives the round
        trip through bf16 / fp16 / fp32 exactly, and so does every power-of-two scale through bf16
        and fp32 (through fp16 only scales of at least 2^-24, which are all but degenerate weights)."""
        super()._apply(fn, recurse)
        self.weight = self.weight.to(FP8)
        self.weight_scale = self.weight_scale.float()
        if self.input_scale is not None:
            self.input_scale = self.input_scale.float()
        if self.bias is not None:
            self.bias = self.bias.to(torch.bfloat16)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8 e4m3, {self.granularity}-wise scales"


def _block_lists(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks of a SpecMaskFoley (backbone, then ControlNet copy), by dotted name."""
    out = []
    for part in ("backbone", "controlnet"):
        m = getattr(model, part, None)
        blocks = getattr(m, "blocks", None) if m is not None else None
        if blocks is not None:
            out.append((f"{part}.blocks", blocks))
    return out


def _layer_norm_bound(norm: nn.LayerNorm) -> tuple[float, Tensor | None, Tensor | None, float]:
    """(bound on any output element, |gamma|, |beta|, bound on the normalised row's L2 norm).

    A normalised row z of width d has mean 0 and (biased) variance var / (var + eps) <= 1, so
    ||z||_2 <= sqrt(d) and any one |z_k| <= sqrt(d - 1) (all other entries equal). The output's
    own rounding (bf16: 2^-9 relative) is within _BOUND_MARGIN."""
    d = norm.normalized_shape[-1]
    g = None if norm.weight is None else norm.weight.detach().float().abs()
    b = None if norm.bias is None else norm.bias.detach().float().abs()
    elem = math.sqrt(d - 1) * (1.0 if g is None else float(g.max())) + (0.0 if b is None else float(b.max()))
    return elem, g, b, math.sqrt(d)


def _linear_of_norm_bound(w: Tensor, bias: Tensor | None, gamma: Tensor | None, beta: Tensor | None, z_norm: float) -> float:
    """Bound on |y' W'^T + bias| for y = gamma * z + beta over every z with ||z||_2 <= z_norm, where
    y' and W' are y and W each rounded element by element (to bf16, or to fp8 in a quantized
    model: relative error <= _ROUND each); `gamma` and `beta` are given as absolute values. Per
    output channel j:
    |sum_k W'_jk y'_k| <= (1 + r)^2 sum_k |W_jk| (|gamma_k| |z_k| + |beta_k|)
                       <= (1 + r)^2 (||W_j * gamma||_2 ||z||_2 + sum_k |W_jk beta_k|)   (Cauchy-Schwarz),
    plus |bias_j|. No cancellation between the beta terms is assumed: rounding errors, relative to
    each |y_k|, do not cancel (a review built bf16 inputs that broke a bound that assumed it)."""
    w = w.detach().float().abs()
    spread = (w if gamma is None else w * gamma).norm(dim=1) * z_norm
    if beta is not None:
        spread = spread + w @ beta
    b = 0.0 if bias is None else bias.detach().float().abs()
    return float(((1 + _ROUND) ** 2 * spread + b).max())


def block_input_bounds(block: nn.Module) -> dict[str, float]:
    """Bounds on |x| at the input of each linear of a pre-norm transformer block (SpecMaskGIT's
    `Block`: norm1 -> attn.qkv -> attention -> attn.proj; norm2 -> mlp.fc1 -> GELU -> mlp.fc2),
    from its weights alone, valid for every input of the block:
    - attn.qkv, mlp.fc1: a layer norm's output, `_layer_norm_bound`;
    - attn.proj: attention's output, a convex combination of value rows, so at most the bound on
      the value projection (the last third of qkv) of a layer-normalised row;
    - mlp.fc2: GELU of fc1's output; GELU(h) lies in [-0.17, max(h, 0)].
    The linear bounds allow for each element being rounded (bf16, or fp8 in the quantized model),
    so they hold for the quantized block too, not only in exact arithmetic. They matter: a value
    above 448 * scale saturates to 448 in current PyTorch and became NaN in releases before
    2026-04. Used by quantize_fp8(granularity="static"); a ConfigError for another block layout."""
    try:
        n1, qkv, proj, n2, fc1, fc2, act = (
            block.get_submodule(n) for n in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2", "mlp.act")
        )
    except AttributeError as e:
        raise ConfigError(f"static fp8 scales need SpecMaskGIT-style blocks (norm1, attn.qkv/proj, norm2, mlp.fc1/act/fc2): {e}; use granularity 'row'") from None
    if not (isinstance(n1, nn.LayerNorm) and isinstance(n2, nn.LayerNorm) and type(act) is nn.GELU):
        raise ConfigError("static fp8 scales need layer norms before attention and MLP and a GELU MLP; use granularity 'row'")
    # the bounds read each projection's weight and bias: a plain nn.Linear's (quantize_fp8 swaps only those)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
        kinds = {k: type(m).__name__ for k, m in zip(("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"), (qkv, proj, fc1, fc2))}
        raise ConfigError(f"static fp8 scales need nn.Linear projections in the blocks, got {kinds}; use granularity 'row'")
    d = qkv.in_features
    if qkv.out_features != 3 * d or proj.in_features != d or fc2.in_features != fc1.out_features:
        raise ConfigError(f"static fp8 scales: unexpected block shapes (qkv {d} -> {qkv.out_features}, proj {proj.in_features}, fc2 {fc2.in_features})")
    e1, g1, b1, z1 = _layer_norm_bound(n1)
    e2, g2, b2, z2 = _layer_norm_bound(n2)
    v_rows = slice(2 * d, 3 * d)  # qkv's output is [q | k | v] (Attention's view(b, l, 3, heads, head_dim))
    v_bias = None if qkv.bias is None else qkv.bias[v_rows]
    h = _linear_of_norm_bound(fc1.weight, fc1.bias, g2, b2, z2)
    return {
        "attn.qkv": e1,
        "attn.proj": _linear_of_norm_bound(qkv.weight[v_rows], v_bias, g1, b1, z1),
        "mlp.fc1": e2,
        "mlp.fc2": max(h, 0.17),
    }


def is_quantized(model: nn.Module) -> bool:
    """Whether `model` holds fp8 linears (`quantize_fp8`)."""
    return any(isinstance(m, Fp8Linear) for m in model.modules())


@torch.no_grad()
def quantize_fp8(model: nn.Module, *, granularity: str = "row", skip: Iterable[str] = ()) -> nn.Module:
    """Replace the linears of `model`'s transformer blocks (backbone and ControlNet) by `Fp8Linear`,
    in place; returns `model`, now for sampling only (see the module docstring).

    - `granularity`: "row" (a scale per output channel of W and per token of x; the default, the
      more accurate), "tensor" (one scale each; cuBLASLt's tensor-wise kernels) or "static"
      (one scale for W; x's scale fixed from a bound that no input can exceed,
      `block_input_bounds`: quantizing needs no reduction, so compiled it fuses into the layer
      norm / GELU / attention output that produces x; SpecMaskGIT-style blocks only).
    - `skip`: dotted names (as in `model.named_modules()`) of linears to leave as they are.
    Raises ConfigError on a GPU without fp8 tensor cores, on a model with no blocks to quantize, or
    on one already quantized."""
    if granularity not in FP8_GRANULARITIES:
        raise ConfigError(f"fp8 granularity must be one of {FP8_GRANULARITIES}, got {granularity!r}")
    if is_quantized(model):
        raise ConfigError("this model is already quantized to fp8 (quantize_fp8 was called on it); quantize once, after loading")
    lists = _block_lists(model)
    if not lists:
        raise ConfigError(
            f"quantize_fp8 found no transformer blocks in {type(model).__name__} (it looks for backbone.blocks and "
            "controlnet.blocks); pass a SpecMaskFoley model"
        )
    device = next(iter(model.parameters())).device
    if not fp8_supported(device):
        cap = ".".join(map(str, torch.cuda.get_device_capability(device))) if device.type == "cuda" else device.type
        raise ConfigError(
            f"fp8 sampling needs an NVIDIA GPU of compute capability 8.9 or later (Ada, Hopper); this model is on "
            f"{device} ({cap}). Sample in bf16 instead (model.to(torch.bfloat16) or precision='bf16')"
        )
    skip = set(skip)
    linears = {f"{prefix}.{n}" for prefix, blocks in lists for n, m in blocks.named_modules() if type(m) is nn.Linear}
    unknown = sorted(skip - linears)
    if unknown:
        raise ConfigError(f"quantize_fp8: skip names {unknown} are not linears in the model's blocks; e.g. {sorted(linears)[:3]}")
    if not linears - skip:
        raise ConfigError("quantize_fp8 found no nn.Linear in the model's blocks (all skipped?); nothing was quantized")
    bounds: dict[str, float] = {}
    if granularity == "static":  # every bound first: nothing is swapped if one block does not fit
        for prefix, blocks in lists:
            # `blocks` is an nn.ModuleList (or Sequential): iterable, which plain nn.Module's type does not say
            bounds |= {f"{prefix}.{i}.{k}": v for i, blk in enumerate(cast("Iterable[nn.Module]", blocks)) for k, v in block_input_bounds(blk).items()}
    for name in sorted(linears - skip):
        parent, child = name.rsplit(".", 1)
        owner = model.get_submodule(parent)
        setattr(owner, child, Fp8Linear.from_linear(getattr(owner, child), granularity, input_bound=bounds.get(name)))
    return model
