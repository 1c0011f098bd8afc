"""Whole-loop CUDA graphs (`generate(..., cuda_graph=True)`, controlfoley.graphs).

On the CPU: the pre-drawn noise gives the tokens of drawing as it goes, and the graph's static
buffers (condition rows, video, start codes, noise) carry each new call's inputs (the same loop,
run uncaptured). On CUDA (skipped without a GPU): the captured graph gives the eager tokens.
"""

import pytest
import torch

from conftest import micro_inputs
from controlfoley import graphs
from controlfoley.errors import ConfigError, ShapeError
from controlfoley.sampling import MaskGITSampler, PredrawnUniforms
from test_fast_paths import live_control

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_predrawn_noise_gives_the_tokens_of_drawing_as_it_goes():
    b, n, v, steps = 3, 20, 11, 6
    w = torch.randn(n, v, generator=torch.Generator().manual_seed(0))

    def logits_fn(codes, mask, k, n_steps):  # depends on the codes so far, like a model
        return w[None] + 0.1 * codes[..., None].float()

    sampler = MaskGITSampler(steps=steps)
    codes, mask = sampler.initial(b, n, v, torch.device("cpu"), None, None)
    eager = sampler.loop(logits_fn, codes, mask, steps=steps, temperature=9.0, generator=torch.Generator().manual_seed(5))
    noise = PredrawnUniforms(steps, b, n, v, torch.device("cpu"))
    noise.fill(torch.Generator().manual_seed(5))
    drawn = sampler.loop(logits_fn, codes, mask, steps=steps, temperature=9.0, uniforms=noise)
    assert torch.equal(eager, drawn)
    assert mask.all() and not codes.any()  # the loop leaves its start untouched (it is a graph input)
    noise.fill(torch.Generator().manual_seed(6))
    noise.rewind()
    assert not torch.equal(drawn, sampler.loop(logits_fn, codes, mask, steps=steps, temperature=9.0, uniforms=noise))


def test_predrawn_noise_refuses_a_request_it_did_not_draw():
    noise = PredrawnUniforms(1, 2, 5, 7, torch.device("cpu"))
    with pytest.raises(ShapeError, match=r"shape \[2, 5, 8\]"):
        noise(torch.Size([2, 5, 8]))
    noise(torch.Size([2, 5, 7]))
    noise(torch.Size([2, 5]))
    with pytest.raises(ShapeError, match="step 1"):
        noise(torch.Size([2, 5, 7]))


def test_cuda_graph_on_the_cpu_names_the_fix(micro_model):
    x = micro_inputs(micro_model)
    with pytest.raises(ConfigError, match="needs the model on a CUDA device.*Drop cuda_graph"):
        micro_model.generate(x["features"], x["text"], cuda_graph=True)


@pytest.fixture
def uncaptured(monkeypatch):
    """The graph path's static-buffer loop, run without capture (this machine has no GPU)."""
    monkeypatch.setattr(graphs, "REQUIRE_CUDA", False)
    yield
    graphs.clear_cuda_graphs()


@pytest.mark.parametrize(("prune_rows", "guidance_every"), [(True, 1), (False, 1), (True, 2)])
def test_each_call_reaches_the_graph_through_its_static_buffers(micro_model, uncaptured, prune_rows, guidance_every):
    """Three calls with other features, text, known tokens and seeds reuse ONE cached loop and each
    gives the eager tokens of its own inputs: a missed copy (of the guidance_every anchor rows, say)
    would repeat the first call's inputs."""
    model = live_control(micro_model)
    opts = dict(steps=5, prune_rows=prune_rows, onednn=False, guidance_every=guidance_every)
    for seed in range(3):
        x = micro_inputs(model, b=2, seed=seed)
        known = torch.rand(2, *model.grid, generator=torch.Generator().manual_seed(seed)) < 0.3 * seed
        kw = dict(known_codes=x["codes"], known_mask=known)
        eager = model.generate(x["features"], x["text"], generator=torch.Generator().manual_seed(seed), **kw, **opts)
        graphed = model.generate(x["features"], x["text"], generator=torch.Generator().manual_seed(seed), cuda_graph=True, **kw, **opts)
        assert torch.equal(eager, graphed), seed
        assert torch.equal(graphed[known], x["codes"][known])
    assert len(graphs._cache_of(model).graphs) == 1


def test_a_new_shape_or_setting_gets_its_own_loop_and_moved_weights_drop_them(micro_model, uncaptured):
    model = live_control(micro_model)
    x2, x3 = micro_inputs(model, b=2), micro_inputs(model, b=3)
    model.generate(x2["features"], x2["text"], steps=3, cuda_graph=True)
    model.generate(x3["features"], x3["text"], steps=3, cuda_graph=True)
    model.generate(x3["features"], x3["text"], steps=4, cuda_graph=True)
    model.generate(x3["features"], x3["text"], steps=4, cfg_scale=2.0, cuda_graph=True)
    assert len(graphs._cache_of(model).graphs) == 4
    model.generate(x3["features"], x3["text"], steps=2, cuda_graph=True)
    assert len(graphs._cache_of(model).graphs) == graphs.MAX_GRAPHS  # the least recently used went
    model.to(torch.float64).to(torch.float32)  # new parameter storage: cached loops would read freed memory
    model.generate(x2["features"], x2["text"], steps=3, cuda_graph=True)
    assert len(graphs._cache_of(model).graphs) == 1
    graphs.clear_cuda_graphs(model)
    assert graphs._cache_of(model) is None


def test_each_setting_the_loop_bakes_in_gets_its_own_loop(micro_model, uncaptured):
    """Temperature, the guidance rule and its schedule, and row pruning are fixed inside a captured
    loop: changing one alone must not replay another's."""
    from controlfoley import GUIDANCE

    model = live_control(micro_model)
    x = micro_inputs(model, b=2)
    variants = [  # each right after one it could be confused with (the cache keeps the last 4)
        {}, {"guidance": GUIDANCE.build("multi", schedule="constant")}, {"temperature": 2.0},
        {"guidance": GUIDANCE.build("cfg_video")}, {"guidance": GUIDANCE.build("cfg_text")}, {"prune_rows": False},
        {"guidance_every": 2}, {"guidance_every": 3},
    ]
    for kw in variants:
        def run(**extra):
            return model.generate(x["features"], x["text"], steps=4, onednn=False, generator=torch.Generator().manual_seed(3), **kw, **extra)

        assert torch.equal(run(), run(cuda_graph=True)), kw
    assert len(graphs._cache_of(model).graphs) == graphs.MAX_GRAPHS  # 8 settings, the oldest dropped


def test_module_switches_the_loop_bakes_in_get_their_own_loop(micro_model, uncaptured, monkeypatch):
    """Math attention and fc1 + GELU as one GEMM (`fuse_gelu_epilogue`) are module switches a
    captured loop bakes in: flipping one must capture anew, not replay the loop without it."""
    from controlfoley.fast import fuse_gelu_epilogue

    built: list[int] = []
    real = graphs.SamplingGraph

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(graphs, "SamplingGraph", Counting)
    model = live_control(micro_model)
    x = micro_inputs(model, b=1)

    def run() -> None:
        model.generate(x["features"], x["text"], steps=2, cuda_graph=True, onednn=False)

    run(), run()
    assert len(built) == 1
    fuse_gelu_epilogue(model)
    run()
    assert len(built) == 2
    fuse_gelu_epilogue(model, enabled=False)
    run()
    assert len(built) == 2  # the first loop again
    attn = next(m for m in model.modules() if isinstance(getattr(m, "fused", None), bool))
    attn.fused = not attn.fused
    run()
    assert len(built) == 3


def test_the_loops_go_with_the_model_and_a_copy_starts_empty(uncaptured):
    import copy
    import gc
    import weakref

    from conftest import micro_overrides
    from controlfoley import build_model

    model = live_control(build_model("specmaskfoley_tiny", **micro_overrides()).eval())  # not a fixture: pytest keeps those
    x = micro_inputs(model)
    model.generate(x["features"], x["text"], steps=2, cuda_graph=True)
    twin = copy.deepcopy(model)
    assert len(graphs._cache_of(model).graphs) == 1 and not graphs._cache_of(twin).graphs
    twin.generate(x["features"], x["text"], steps=2, cuda_graph=True)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # a loop holds its model; the cache must not keep both alive


def test_static_shapes_false_cannot_be_captured(micro_model, uncaptured):
    x = micro_inputs(micro_model)
    with pytest.raises(ConfigError, match="static_shapes=False cannot be captured"):
        micro_model.generate(x["features"], x["text"], static_shapes=False, cuda_graph=True)


# -- on a GPU -------------------------------------------------------------------------------------
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "bf16 model"])
@pytest.mark.parametrize("compile", [False, True])
def test_captured_loop_gives_the_eager_tokens_on_cuda(micro_model, dtype, compile):
    model = live_control(micro_model).cuda()
    if dtype == "bf16 model":  # generate's default for a bf16 model: no autocast (added after the H200 runs)
        model, dtype = model.to(torch.bfloat16), None
    try:
        for seed in range(3):
            x = micro_inputs(model, b=2, seed=seed)
            feats = {k: v.cuda() for k, v in x["features"].items()}
            text = x["text"].cuda()

            def run(**kw):
                g = torch.Generator("cuda").manual_seed(seed)
                return model.generate(feats, text, steps=6, dtype=dtype, compile=compile, generator=g, **kw)

            eager, graphed = run(), run(cuda_graph=True)
            same = (eager == graphed).float().mean().item()
            # fp32: the same kernels in the same order, so identical; bf16 autocast may pick other
            # kernels inside a capture only if cuBLAS does, so allow a few tokens
            assert same == 1.0 if dtype == torch.float32 and not compile else same >= 0.97, (seed, same)
        assert len(graphs._cache_of(model).graphs) == 1
    finally:
        graphs.clear_cuda_graphs()


@cuda
@pytest.mark.parametrize("compile", [False, True])
def test_captured_loop_with_guidance_every_gives_the_eager_tokens_on_cuda(micro_model, compile):
    """The reused offsets live inside the captured loop (allocated in capture, rewritten each replay)."""
    model = live_control(micro_model).cuda()
    try:
        for seed in range(2):
            x = micro_inputs(model, b=2, seed=seed)
            feats, text = {k: v.cuda() for k, v in x["features"].items()}, x["text"].cuda()

            def run(**kw):
                g = torch.Generator("cuda").manual_seed(seed)
                return model.generate(feats, text, steps=7, dtype=torch.float32, compile=compile, guidance_every=3, generator=g, **kw)

            same = (run() == run(cuda_graph=True)).float().mean().item()
            assert same == 1.0 if not compile else same >= 0.97, (seed, same)
        assert len(graphs._cache_of(model).graphs) == 1
    finally:
        graphs.clear_cuda_graphs()


def test_the_least_recently_used_loop_is_the_one_dropped(micro_model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graphs, "REQUIRE_CUDA", False)
    built: list[int] = []
    real = graphs.SamplingGraph

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            built.append(kwargs["steps"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(graphs, "SamplingGraph", Counting)
    model = live_control(micro_model)
    x = micro_inputs(model, b=1)

    def run(steps: int) -> None:
        model.generate(x["features"], x["text"], steps=steps, cuda_graph=True, onednn=False)

    try:
        for s in (1, 2, 3, 4, 1, 5):  # 1 reused (now the most recent), 5 pushes out 2
            run(s)
        assert built == [1, 2, 3, 4, 5]
        for s in (5, 1, 3, 4):  # all still cached: replayed, not captured again
            run(s)
        assert built == [1, 2, 3, 4, 5]
        run(2)
        assert built == [1, 2, 3, 4, 5, 2]
    finally:
        graphs.clear_cuda_graphs()
