"""FP8 linears for sampling (controlfoley.quantize): numerics against nn.Linear, the swap inside a
model, sampling with it, and the refusals (training, saving, twice, unsupported GPU). PyTorch's
CPU fp8 kernel runs these here; the CUDA case (captured loop = eager tokens) needs an Ada/Hopper GPU."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import micro_inputs
from controlfoley import quantize
from controlfoley.errors import CheckpointError, ConfigError
from controlfoley.quantize import FP8_MAX, Fp8Linear, is_quantized, quantize_fp8
from test_fast_paths import centred_logits, live_control

fp8_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)), reason="needs a CUDA GPU with fp8 (compute capability >= 8.9)"
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_fp8_linear_is_close_to_the_linear_it_replaces(granularity):
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    q = Fp8Linear.from_linear(lin, granularity)
    x = torch.randn(3, 10, 64) * torch.logspace(-2, 2, 10)[:, None]  # rows of very different size
    with torch.no_grad():
        ref = lin(x)
        out = q(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # e4m3 keeps 3 mantissa bits: ~2-4% relative error per product is the expected size
    assert rel_err(out, ref) < 0.06
    # a broken scale (e.g. applied twice, or the weight's per-channel scale on the wrong axis) is far off
    wrong = Fp8Linear.from_linear(lin, granularity)
    wrong.weight_scale.mul_(2.0)
    with torch.no_grad():
        assert rel_err(wrong(x), ref) > 0.5


@pytest.mark.skipif(not quantize._CPU_ROWWISE, reason="this torch's CPU kernel takes no per-row scales to compare with")
@pytest.mark.parametrize("bias", [True, False])
def test_the_cpu_emulation_of_row_scales_gives_the_kernels_products(monkeypatch, bias):
    """torch 2.11's CPU _scaled_mm refuses per-row scales (the row-wise tests failed there with
    "only supports per-tensor scaling for CPU backend"); Fp8Linear then computes the same product in
    fp32. Against this torch's kernel: within one bf16 rounding (sums in another order)."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 96, bias=bias)
    q = Fp8Linear.from_linear(lin, "row")
    x = torch.randn(3, 10, 64) * torch.logspace(-2, 2, 10)[:, None]
    with torch.no_grad():
        kernel = q(x)
        monkeypatch.setattr(quantize, "_CPU_ROWWISE", False)  # as torch 2.11 probes

        def refuse(*args, **kwargs):
            raise RuntimeError("Now _scaled_mm only supports per-tensor scaling for CPU backend")

        monkeypatch.setattr(torch, "_scaled_mm", refuse)
        emulated = q(x)
    assert emulated.dtype == kernel.dtype == torch.float32 and emulated.shape == kernel.shape
    torch.testing.assert_close(emulated, kernel, rtol=2**-8, atol=1e-6)  # bf16 output: 8 significant bits
    assert rel_err(emulated, lin(x).detach()) < 0.06


def test_the_cpu_probe_ignores_the_default_dtype_and_device():
    """The probe made its scales with torch.ones() unqualified: under a float64 default dtype torch
    2.14 refused them (ValueError, uncaught, so every row-wise Fp8Linear failed to build), and under
    torch.device("meta") it asked the meta kernel, which takes row scales on any torch."""
    settled = quantize._probe_cpu_rowwise()
    assert settled == quantize._CPU_ROWWISE
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        assert quantize._probe_cpu_rowwise() == settled
    finally:
        torch.set_default_dtype(old)
    with torch.device("meta"):
        assert quantize._probe_cpu_rowwise() == settled


def test_row_scales_keep_small_tokens_and_channels_accurate():
    """Per-token activation scales and per-channel weight scales: a token 1e6 times smaller than
    another, and an output channel 1e5 times larger than the rest, stay as accurate as the others
    (one scale for the whole tensor loses them: ~0.3 relative error, measured)."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 96, bias=False)
    with torch.no_grad():
        lin.weight[0].mul_(1e5)
    x = torch.randn(10, 64) * torch.logspace(-4, 2, 10)[:, None]
    with torch.no_grad():
        ref = lin(x)
        row, tensor = Fp8Linear.from_linear(lin, "row")(x), Fp8Linear.from_linear(lin, "tensor")(x)
    small_tokens, other_channels = (slice(0, 3), slice(None)), (slice(None), slice(1, None))
    for part in (small_tokens, other_channels):
        assert rel_err(row[part], ref[part]) < 0.06
        assert rel_err(tensor[part], ref[part]) > 0.15


def test_fp8_weights_use_power_of_two_scales_that_fill_the_fp8_range():
    lin = nn.Linear(32, 48)
    with torch.no_grad():
        lin.weight[0].mul_(1000.0)  # one output channel much larger than the others
        lin.weight[1].zero_()
    q = Fp8Linear.from_linear(lin, "row")
    s = q.weight_scale.flatten()
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)  # powers of two
    w = q.weight.float()
    top = w.abs().amax(dim=1)
    keep = torch.ones(48, dtype=torch.bool)
    keep[1] = False
    # the smallest power of two that fits: each row's largest value lands in (224, 448]
    assert bool(((top[keep] > FP8_MAX / 2) & (top[keep] <= FP8_MAX)).all())
    deq = w * s[:, None]
    assert rel_err(deq[keep], lin.weight[keep]) < 0.05
    assert (deq[1] == 0).all()


def test_fp8_linear_output_dtype_follows_its_input_like_a_linear():
    q = Fp8Linear.from_linear(nn.Linear(32, 32))
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert q(x).dtype == torch.float32
        assert q(x.bfloat16()).dtype == torch.bfloat16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert q(x).dtype == torch.bfloat16
        zero = q(torch.zeros(2, 32))  # an all-zero row: its scale is floored, the output is the bias
    assert torch.allclose(zero, q.bias.float().expand(2, -1))


@pytest.mark.parametrize("emulated", [False, True], ids=["kernel", "emulated"])
@pytest.mark.parametrize("mode", ["fp16 input", "fp16 autocast"])
def test_fp8_linear_takes_fp16_inputs_with_small_and_zero_rows(mode, emulated, monkeypatch):
    """fp16 cannot hold 1 / scale of a small row (it would overflow to inf and give NaN or garbage).
    Emulated (torch 2.11's CPU): the fp32 product must not be autocast to fp16 (448 x 448 x 32 > 65504)."""
    if emulated:
        monkeypatch.setattr(quantize, "_CPU_ROWWISE", False)
    torch.manual_seed(0)
    lin = nn.Linear(32, 32)
    q = Fp8Linear.from_linear(lin)
    x = torch.randn(3, 32) * torch.tensor([[1.0], [1e-3], [0.0]])
    with torch.no_grad():
        ref = lin(x)
        if mode == "fp16 input":
            out = q(x.half())
        else:
            with torch.autocast("cpu", dtype=torch.float16):
                out = q(x)
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())
    assert rel_err(out[:2], ref[:2]) < 0.06 and torch.allclose(out[2].float(), ref[2], atol=1e-2)


def test_dtype_casts_after_quantizing_keep_the_fp8_weights(micro_model):
    model = quantize_fp8(micro_model)
    fc1 = model.backbone.blocks[0].mlp.fc1
    before = fc1.weight.clone()
    model.to(torch.bfloat16)
    model.half()
    assert fc1.weight.dtype == torch.float8_e4m3fn and torch.equal(fc1.weight.view(torch.uint8), before.view(torch.uint8))
    assert fc1.weight_scale.dtype == torch.float32 and fc1.bias.dtype == torch.bfloat16


def test_fp8_linear_refuses_sizes_its_kernels_do_not_take_and_gradients():
    with pytest.raises(ConfigError, match="multiples of 16.*unquantized"):
        Fp8Linear.from_linear(nn.Linear(30, 32))
    with pytest.raises(ConfigError, match="granularity"):
        Fp8Linear(32, 32, granularity="channel")
    q = Fp8Linear.from_linear(nn.Linear(32, 32))
    with pytest.raises(ConfigError, match="sampling only.*quantize a copy"):
        q(torch.randn(2, 32, requires_grad=True))


# How far fp8 logits may sit from the fp32 model's (relative error of the centred logits, fp32
# vs the quantized bf16 micro model): measured 0.023 for each granularity (power-of-two scales only
# shift e4m3's exponent, so they round alike); bf16 alone 0.006; every fp8 linear's output 10% off
# 0.079, zeroed 0.42.
FP8_LOGIT_TOL = 0.05


def test_quantize_fp8_swaps_the_block_linears_and_samples_close_to_bf16(micro_model):
    model = live_control(micro_model)
    x = micro_inputs(model, b=4)
    exact = centred_logits(model, x)
    model = model.to(torch.bfloat16)
    bf16 = model.generate(x["features"], x["text"], generator=torch.Generator().manual_seed(3))
    n_blocks = len(model.backbone.blocks) + len(model.controlnet.blocks)
    assert quantize_fp8(model) is model and is_quantized(model)
    fp8 = [n for n, m in model.named_modules() if isinstance(m, Fp8Linear)]
    assert len(fp8) == 4 * n_blocks  # qkv, proj, fc1, fc2 per block
    assert all(n.startswith(("backbone.blocks.", "controlnet.blocks.")) for n in fp8)
    assert type(model.backbone.head) is nn.Linear and type(model.backbone.cond_proj) is nn.Linear  # outside the blocks
    assert not any(isinstance(m, Fp8Linear) for m in model.controlnet.outs.modules())  # zero linears stay
    assert rel_err(centred_logits(model, x), exact) < FP8_LOGIT_TOL
    out = model.generate(x["features"], x["text"], generator=torch.Generator().manual_seed(3))
    # lossy, but most tokens agree (a weak check alone: the untrained model's logits spread ~0.1,
    # so the shared noise decides most tokens; the logits above are the real check)
    same = (out == bf16).float().mean().item()
    assert same > 0.8, same
    again = model.generate(x["features"], x["text"], generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


def test_quantize_fp8_skip_leaves_named_linears(micro_model):
    with pytest.raises(ConfigError, match=r"skip names \['backbone.blocks.0.mlp.fc3'\] are not linears"):
        quantize_fp8(micro_model, skip=["backbone.blocks.0.mlp.fc3"])
    assert not is_quantized(micro_model)  # refused before any change
    quantize_fp8(micro_model, skip=["backbone.blocks.0.mlp.fc2"])
    assert type(micro_model.backbone.blocks[0].mlp.fc2) is nn.Linear
    assert isinstance(micro_model.backbone.blocks[0].mlp.fc1, Fp8Linear)


def test_quantize_fp8_refusals_name_the_fix(micro_model, monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="no transformer blocks.*SpecMaskFoley"):
        quantize_fp8(nn.Sequential(nn.Linear(16, 16)))
    with pytest.raises(ConfigError, match="granularity"):
        quantize_fp8(micro_model, granularity="block")
    monkeypatch.setattr(quantize, "fp8_supported", lambda device: False)
    with pytest.raises(ConfigError, match=r"compute capability 8\.9.*bf16"):
        quantize_fp8(micro_model)
    monkeypatch.undo()
    quantize_fp8(micro_model)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_fp8(micro_model)
    with pytest.raises(CheckpointError, match="fp8.*save the model before quantizing"):
        micro_model.save(tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


@fp8_cuda
@pytest.mark.parametrize("granularity", ["row", "static"])
@pytest.mark.parametrize("compile", [False, True])
def test_fp8_captured_loop_gives_the_eager_tokens_on_cuda(micro_model, compile, granularity):
    model = quantize_fp8(live_control(micro_model).cuda().to(torch.bfloat16), granularity=granularity)
    x = micro_inputs(model, b=2)
    feats = {k: v.cuda() for k, v in x["features"].items()}
    text = x["text"].cuda()

    def run(**kw):
        return model.generate(feats, text, steps=4, generator=torch.Generator("cuda").manual_seed(1), compile=compile, **kw)

    eager = run()
    run(cuda_graph=True)  # captures
    graphed = run(cuda_graph=True)  # replays
    assert (graphed == eager).float().mean().item() >= 0.97


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), log_scale=st.floats(-3, 3), spike=st.booleans(), shift=st.sampled_from([0.0, 20.0]))
def test_static_bounds_hold_for_every_input(seed, log_scale, spike, shift):
    """block_input_bounds is a bound from the weights alone: no input of the block, however large,
    small or spiky (one entry per row, which makes a layer norm's output element its largest,
    sqrt(d - 1)), with small or large biases, gives a linear an input above it."""
    from controlfoley.backbones.specmaskgit import Block
    from controlfoley.quantize import block_input_bounds

    g = torch.Generator().manual_seed(seed)
    blk = Block(32, 2, 64).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 1 else 0.3))
        blk.norm1.weight.add_(1.0)
        blk.norm2.weight.add_(1.0)
        blk.attn.qkv.weight[64:].mul_(4.0)  # value rows larger than q / k rows: a bound on the wrong rows fails
        for name, p in blk.named_parameters():
            if name.endswith("bias"):  # large shifts (beta, biases): the bound's constant part dominates
                p.add_(shift)
    bounds = block_input_bounds(blk)
    seen: dict[str, float] = {}

    def hook(name):
        return lambda mod, args: seen.__setitem__(name, max(seen.get(name, 0.0), float(args[0].abs().max())))

    for name in bounds:
        blk.get_submodule(name).register_forward_pre_hook(hook(name))
    x = torch.randn(3, 20, 32, generator=g) * 10**log_scale
    if spike:
        x = torch.zeros_like(x)
        x[..., seed % 32] = 10**log_scale
    with torch.no_grad():
        blk(x)
    assert set(seen) == set(bounds)
    for name, bound in bounds.items():
        assert seen[name] <= bound * 1.001, (name, seen[name], bound)


def test_static_fp8_samples_close_to_bf16_and_keeps_its_scales(micro_model):
    model = live_control(micro_model)
    x = micro_inputs(model, b=4)
    exact = centred_logits(model, x)
    model = model.to(torch.bfloat16)
    bf16 = model.generate(x["features"], x["text"], generator=torch.Generator().manual_seed(3))
    quantize_fp8(model, granularity="static")
    assert rel_err(centred_logits(model, x), exact) < FP8_LOGIT_TOL
    qkv = model.controlnet.blocks[0].attn.qkv
    assert qkv.granularity == "static" and qkv.input_scale.dim() == 0 and qkv.weight_scale.dim() == 0
    s = float(qkv.input_scale)
    assert s == 2.0 ** round(math.log2(s))  # a power of two
    out = model.generate(x["features"], x["text"], generator=torch.Generator().manual_seed(3))
    same = (out == bf16).float().mean().item()
    assert same > 0.8, same
    model.half()
    assert qkv.input_scale.dtype == torch.float32 and qkv.weight.dtype == torch.float8_e4m3fn


def test_static_fp8_linear_is_close_within_its_bound_and_refuses_a_missing_one():
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    x = torch.randn(50, 64)
    q = Fp8Linear.from_linear(lin, "static", input_bound=float(x.abs().max()) * 4)  # a loose bound costs little
    with torch.no_grad():
        assert rel_err(q(x), lin(x)) < 0.06
    with pytest.raises(ConfigError, match="need a finite positive bound"):
        Fp8Linear.from_linear(lin, "static")
    with pytest.raises(ConfigError, match="input_bound is for granularity 'static' only"):
        Fp8Linear.from_linear(lin, "row", input_bound=1.0)


def test_static_scales_refuse_a_block_they_cannot_bound():
    from controlfoley.quantize import block_input_bounds

    with pytest.raises(ConfigError, match="SpecMaskGIT-style blocks.*; use granularity 'row'"):
        block_input_bounds(nn.TransformerEncoderLayer(32, 2, 64))


def test_static_scales_refuse_a_block_whose_projection_is_not_a_linear():
    """The bounds read each projection's weight and bias as an nn.Linear's: a SpecMaskGIT-style
    block with another module there (a wrapped or custom projection) is a ConfigError naming it,
    not an AttributeError from deep inside the bound (mypy found the missing check)."""
    from controlfoley.backbones.specmaskgit import Block
    from controlfoley.quantize import block_input_bounds

    blk = Block(32, 2, 64)
    blk.mlp.fc2 = nn.Sequential(blk.mlp.fc2)
    with pytest.raises(ConfigError, match=r"need nn.Linear projections.*'mlp.fc2': 'Sequential'"):
        block_input_bounds(blk)


def test_static_fp8_compiles_to_the_eager_tokens(micro_model):
    """The static path is the one meant to be compiled (its quantizing fuses into the producing op)."""
    model = quantize_fp8(live_control(micro_model).to(torch.bfloat16), granularity="static")
    x = micro_inputs(model, b=2)

    def run(**kw):
        return model.generate(x["features"], x["text"], steps=4, generator=torch.Generator().manual_seed(2), **kw)

    eager, compiled = run(), run(compile=True)
    assert (compiled == eager).float().mean().item() >= 0.97


def _one_block_model(blk: nn.Module) -> nn.Module:
    m = nn.Module()
    m.backbone = nn.Module()
    m.backbone.blocks = nn.ModuleList([blk])
    return m


@pytest.mark.parametrize("gamma, beta, v_bias", [(1.0703125, 0.0, 16.0), (1.078125, 0.0, 48.0), (18.5, 384.0, 0.0)])
def test_static_scales_hold_for_aligned_inputs_of_a_quantized_bf16_block(gamma, beta, v_bias):
    """Inputs built to push attention's output to its bound in a bf16, quantized block (value rows
    aligned with the normalised input, large biases): rounding of each element (bf16 layer norm,
    fp8 weights and inputs) must stay inside the fixed scale: nothing reaches 448 * input_scale,
    where e4m3 would saturate. A review broke a bound that ignored that rounding with these cases."""
    from controlfoley.backbones.specmaskgit import Block

    d = 64
    sign = torch.tensor([1.0, -1.0] * (d // 2))
    blk = Block(d, 2, 128).to(torch.bfloat16).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.zero_()
        blk.norm1.weight.fill_(gamma)
        blk.norm1.bias.fill_(beta)
        blk.norm2.weight.fill_(1.0)
        blk.attn.qkv.weight[2 * d :] = sign * 1.0703125
        blk.attn.qkv.weight[0, 0] = 1.75
        blk.attn.qkv.bias[2 * d :] = v_bias
        blk.attn.proj.weight.copy_(torch.eye(d))
    quantize_fp8(_one_block_model(blk), granularity="static")
    seen = {}
    blk.attn.proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("in", float(a[0].float().abs().max())))
    with torch.no_grad():
        blk((sign * 1000.0).expand(2, 8, d).bfloat16().contiguous())
    assert seen["in"] < FP8_MAX * float(blk.attn.proj.input_scale)


def test_layer_norm_bound_covers_a_single_spike_with_plain_weights() -> None:
    from controlfoley.backbones.specmaskgit import Block
    from controlfoley.quantize import block_input_bounds

    blk = Block(32, 2, 64).eval()
    with torch.no_grad():
        blk.norm1.weight.fill_(1.0)
        blk.norm1.bias.zero_()
        x = torch.zeros(1, 4, 32)
        x[..., 5] = 100.0
        seen = float(blk.norm1(x).abs().max())
    assert seen == pytest.approx(31**0.5, rel=1e-4)
    assert block_input_bounds(blk)["attn.qkv"] >= seen
