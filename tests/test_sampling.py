"""MaskGIT sampler and guidance: schedule counts, determinism, inpainting, one batched forward per step."""

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import micro_inputs
from controlfoley import GUIDANCE
from controlfoley.guidance import TEXT_VIDEO, UNCOND, VIDEO, scale_at
from controlfoley.errors import ConfigError, ShapeError
from controlfoley.sampling import MaskGITSampler, masked_count


def reference_counts(n: int, steps: int) -> list[int]:
    """docs/DESIGN.md's rule, written out plainly: masked tokens left after each step."""
    left, out = n, []
    for k in range(steps):
        if k == steps - 1:
            nxt = 0
        else:
            r = (k + 1) / steps
            nxt = math.floor(n * math.cos(math.pi / 2 * r))
            nxt = min(max(min(nxt, left - 1), 1), left)  # google-research/maskgit: max(1, min(left - 1, nxt))
        out.append(max(nxt, 0))
        left = out[-1]
    return out


class Recorder:
    """A logits function with random logits that records the mask it was called with."""

    def __init__(self, vocab: int, seed: int = 0):
        self.g = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.masks: list[torch.Tensor] = []
        self.codes: list[torch.Tensor] = []

    def __call__(self, codes, mask, k, n):
        self.masks.append(mask.clone())
        self.codes.append(codes.clone())
        return torch.randn(*codes.shape, self.vocab, generator=self.g)


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 64), n=st.integers(2, 300))
def test_masked_counts_follow_the_reference_rule(steps, n):
    rec = Recorder(16)
    out = MaskGITSampler(steps=steps).sample(rec, batch=1, n_tokens=n, vocab_size=16, generator=torch.Generator().manual_seed(0))
    counts = [int(m.sum()) for m in rec.masks[1:]] + [0]
    ref = reference_counts(n, steps)
    ref = ref[: len(counts)]  # the sampler stops once nothing is masked
    assert counts == ref
    assert out.shape == (1, n) and out.min() >= 0 and out.max() < 16


def test_masked_count_vectorised_matches_scalar():
    n_unknown = torch.tensor([265, 100, 3])
    masked_now = n_unknown.clone()
    for k in range(12):
        got = masked_count(k, 12, n_unknown, masked_now)
        for i in range(3):
            r = (k + 1) / 12
            exp = 0 if k == 11 else max(1, min(math.floor(int(n_unknown[i]) * math.cos(math.pi / 2 * r)), int(masked_now[i]) - 1))
            assert int(got[i]) == max(exp, 0)
        masked_now = got


@pytest.mark.parametrize(
    ("schedule", "gamma"),
    [("cosine", lambda r: math.cos(math.pi / 2 * r)), ("linear", lambda r: 1.0 - r), ("square", lambda r: 1.0 - r * r), ("cubic", lambda r: 1.0 - r**3)],
)
def test_each_mask_schedule_keeps_its_fraction_masked(schedule, gamma):
    """gamma(r) for every schedule the sampler takes: the sampler leaves floor(n gamma((k + 1) / n_steps))
    masked after step k (at least 1, fewer than before), and nothing after the last."""
    n, steps = 200, 8
    rec = Recorder(16)
    MaskGITSampler(steps=steps, mask_schedule=schedule).sample(rec, batch=1, n_tokens=n, vocab_size=16, generator=torch.Generator().manual_seed(0))
    counts, masked = [int(m.sum()) for m in rec.masks[1:]], n
    want = []
    for k in range(steps - 1):
        masked = max(1, min(math.floor(n * gamma((k + 1) / steps)), masked - 1))
        want.append(masked)
    assert counts == want[: len(counts)] and len(counts) == steps - 1


def test_same_seed_same_tokens_and_different_seed_differs():
    s = MaskGITSampler(steps=8)
    a = s.sample(Recorder(32, 1), batch=2, n_tokens=50, vocab_size=32, generator=torch.Generator().manual_seed(5))
    b = s.sample(Recorder(32, 1), batch=2, n_tokens=50, vocab_size=32, generator=torch.Generator().manual_seed(5))
    c = s.sample(Recorder(32, 1), batch=2, n_tokens=50, vocab_size=32, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("n_steps", [4, 12])
def test_confidence_noise_is_scaled_by_temperature_times_one_minus_r(monkeypatch, n_steps):
    """Step k ranks tokens by log p(sampled) + T (1 - (k + 1) / n) g. Two masked tokens, one to
    re-mask: token 0 has log p ~0, token 1 log p -1.31 plus noise g. Token 1 outranks token 0 exactly
    when T (1 - r) g > 1.31, so noise just below and just above 1.31 / (T (1 - r)) pins the factor at
    every step: an unannealed or wrongly annealed factor flips at least one of them."""
    import controlfoley.sampling as sampling

    temperature = 9.0
    logits = torch.tensor([[[0.0, -50.0], [0.0, -1.0]]])
    sample_noise = torch.tensor([[[0.0, 0.0], [0.0, 5.0]]])  # the token draw picks token 0 at 0 and token 1 at 1
    logp_sel = torch.log_softmax(logits, -1)[0, [0, 1], [0, 1]]  # ~0 and -1.31
    codes, mask, n_unknown = torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool), torch.tensor([2])
    monkeypatch.setattr(sampling, "masked_count", lambda *a, **k: torch.tensor([1]))
    s = MaskGITSampler(steps=n_steps, temperature=temperature)
    for k in range(n_steps - 1):
        factor = temperature * (1.0 - (k + 1) / n_steps)
        threshold = float(logp_sel[0] - logp_sel[1]) / factor  # g where token 1's confidence equals token 0's
        for g, remasked in ((0.98 * threshold, 1), (1.02 * threshold, 0)):
            noise = iter([sample_noise, torch.tensor([[0.0, g]])])  # Gumbel draws: token sampling, then confidence
            monkeypatch.setattr(sampling, "_gumbel", lambda *a, _n=noise, **kw: next(_n))
            sampled, new_mask = s.step(logits, codes, mask, n_unknown, k, n_steps, temperature, None)
            assert sampled.tolist() == [[0, 1]]
            assert new_mask[0].nonzero().flatten().tolist() == [remasked], (k, g, factor)


def test_temperature_is_annealed_linearly_to_zero():
    # With zero temperature the confidence is log p of the sampled token: the most confident stay.
    s = MaskGITSampler(steps=4, temperature=9.0)
    logits = torch.log_softmax(torch.randn(1, 20, 8), -1)
    codes = torch.zeros(1, 20, dtype=torch.long)
    mask = torch.ones(1, 20, dtype=torch.bool)
    n_unknown = torch.tensor([20])
    _, kept_last = s.step(logits, codes, mask, n_unknown, 3, 4, 9.0, torch.Generator().manual_seed(0))
    assert not kept_last.any()  # the last step (1 - r = 0) leaves nothing masked
    sampled, new_mask = s.step(logits, codes, mask, n_unknown, 0, 4, 0.0, torch.Generator().manual_seed(0))
    conf = logits.gather(-1, sampled[..., None]).squeeze(-1)
    assert conf[new_mask].max() <= conf[~new_mask].min()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), frac=st.floats(0.0, 0.95), steps=st.integers(1, 16))
def test_known_tokens_are_never_changed(seed, frac, steps):
    g = torch.Generator().manual_seed(seed)
    known_mask = torch.rand(3, 40, generator=g) < frac
    known = torch.randint(0, 32, (3, 40), generator=g)
    rec = Recorder(32, seed)
    out = MaskGITSampler(steps=steps).sample(
        rec, batch=3, n_tokens=40, vocab_size=32, known_codes=known, known_mask=known_mask, generator=g
    )
    assert torch.equal(out[known_mask], known[known_mask])
    for m in rec.masks:  # a known token is never offered to the model as masked
        assert not (m & known_mask).any()


def test_guidance_scale_zero_gives_uncond_and_multi_is_eq1():
    l_u, l_v, l_tv = (torch.randn(2, 7, 5) for _ in range(3))
    multi = GUIDANCE.build("multi")
    assert multi.conditions == (UNCOND, VIDEO, TEXT_VIDEO)
    assert torch.equal(multi.combine((l_u, l_v, l_tv), 0.0), l_u)
    s = 2.5
    assert torch.equal(multi.combine((l_u, l_v, l_tv), s), l_u + s * ((l_tv - l_u) + (l_v - l_u)))
    for name in ("cfg_video", "cfg_text_video", "cfg_text"):
        rule = GUIDANCE.build(name)
        assert rule.conditions[0] == UNCOND and len(rule.conditions) == 2
        assert torch.equal(rule.combine((l_u, l_v), 0.0), l_u)
        assert torch.allclose(rule.combine((l_u, l_v), s), l_u + s * (l_v - l_u), atol=1e-6)  # l_u + s (l_c - l_u)
        assert torch.allclose(rule.combine((l_u, l_v), 1.0), l_v, atol=1e-6)
    assert scale_at(0, 12, 3.0, "linear") == 0.0 and scale_at(11, 12, 3.0, "linear") == 3.0
    assert scale_at(5, 12, 3.0, "constant") == 3.0


def test_a_rule_s_own_scale_at_is_the_schedule_generate_samples_with(micro_model, monkeypatch):
    """A rule overriding scale_at (a schedule of its own) was never called: the sampler used the
    module's linear/constant schedule. It is now called, on a copy holding generate's cfg_scale."""
    from controlfoley.guidance import MultiCFG

    seen: list[tuple[int, int, float]] = []
    scales: list[float] = []

    class Cosine(MultiCFG):
        def scale_at(self, step: int, n_steps: int) -> float:
            seen.append((step, n_steps, self.scale))
            return self.scale * (1 - math.cos(math.pi * step / (n_steps - 1))) / 2

    rule = Cosine(scale=2.0)
    real = rule.combine
    monkeypatch.setattr(Cosine, "combine", lambda self, logits, s: scales.append(s) or real(logits, s))
    x = micro_inputs(micro_model, b=1)
    micro_model.generate(x["features"], x["text"], steps=4, guidance=rule, cfg_scale=5.0, generator=torch.Generator().manual_seed(0))
    assert seen == [(k, 4, 5.0) for k in range(4)] and rule.scale == 2.0  # generate's scale, on a copy
    # (the spy's combine is not a known linear rule, so step 0 runs every row too, combined at scale 0)
    assert scales == pytest.approx([5.0 * (1 - math.cos(math.pi * k / 3)) / 2 for k in range(4)])
    class Fixed(Cosine):  # a read-only scale: sampled as it is; cfg_scale cannot replace it
        scale = property(lambda self: 2.0)  # type: ignore[assignment]

        def __init__(self) -> None:
            self.schedule, self.conditions = "linear", MultiCFG.conditions

    seen.clear()
    micro_model.generate(x["features"], x["text"], steps=4, guidance=Fixed(), generator=torch.Generator().manual_seed(0))
    assert [s for _, _, s in seen] == [2.0] * 4
    with pytest.raises(ConfigError, match=r"its scale cannot be set \(a read-only attribute of Fixed\), so cfg_scale 5 cannot replace its 2; leave cfg_scale out"):
        micro_model.generate(x["features"], x["text"], steps=4, guidance=Fixed(), cfg_scale=5.0, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(Cosine, "scale_at", lambda self, step, n_steps: float("nan"))
    with pytest.raises(ConfigError, match=r"scale_at\(0, 4\) returned nan; it must return a finite number"):
        micro_model.generate(x["features"], x["text"], steps=4, guidance=rule, generator=torch.Generator().manual_seed(0))


def test_a_rule_s_repr_holds_its_own_settings():
    """generate --skip-existing compares rules by repr: a rule's own arguments must be in it."""
    from controlfoley.guidance import MultiCFG

    class Weighted(MultiCFG):
        def __init__(self, video_weight: float = 1.0, **kw) -> None:
            super().__init__(**kw)
            self.video_weight = video_weight

    assert "video_weight=0.5" in repr(Weighted(0.5)) and repr(Weighted(0.5)) != repr(Weighted(2.0))
    rule = Weighted(0.5)
    rule._steps_seen = 3  # state set while sampling: not a setting, so an output is still kept
    assert repr(rule) == repr(Weighted(0.5))

    class Tabled(MultiCFG):
        def __init__(self, table: torch.Tensor, scale: float = 3.0) -> None:
            super().__init__(scale)
            self.table = table

    a, b = torch.zeros(2000), torch.zeros(2000)
    b[1000] = 1.0  # where torch's repr of a large tensor elides the values
    assert repr(a) == repr(b) and repr(Tabled(a)) != repr(Tabled(b))
    assert repr(Tabled(a)) == repr(Tabled(a.clone())) and "\n" not in repr(Tabled(a)) and len(repr(Tabled(a))) < 200
    assert repr(GUIDANCE.build("multi")) == "MultiCFG(scale=3.0, schedule='linear', conditions=[uncond, video, text_video])"
    assert repr(GUIDANCE.build("cfg_video")) == "CFG(scale=3.0, schedule='linear', conditions=[uncond, video])"


@pytest.mark.parametrize("rule", ["multi", "cfg_video", "cfg_text_video", "none"])
def test_one_batched_forward_per_step(micro_model, rule, monkeypatch):
    calls = []
    orig = micro_model.backbone.forward_blocks

    def spy(x, residuals=None):
        calls.append(x.shape[0])
        return orig(x, residuals)

    monkeypatch.setattr(micro_model.backbone, "forward_blocks", spy)
    cn_rows = []
    orig_cn = micro_model.controlnet.forward
    monkeypatch.setattr(micro_model.controlnet, "forward", lambda x, c: cn_rows.append(x.shape[0]) or orig_cn(x, c))
    x = micro_inputs(micro_model, b=2)
    rule_obj = GUIDANCE.build(rule)
    out = micro_model.generate(x["features"], x["text"], steps=5, guidance=rule_obj, generator=torch.Generator().manual_seed(0))
    n_sets, n_video = len(rule_obj.conditions), sum(c.video for c in rule_obj.conditions)
    if rule == "none":
        assert calls == [2] * 5 and cn_rows == [2] * 5
    else:  # default prune_rows: the scale-0 first step of the linear schedule needs only l_u
        assert calls == [2] + [2 * n_sets] * 4  # one forward per step, all condition sets stacked
        assert cn_rows == [2 * n_video] * 4  # ControlNet only on video rows, never at the uncond-only step
    calls.clear(), cn_rows.clear()
    micro_model.generate(x["features"], x["text"], steps=5, guidance=rule_obj, generator=torch.Generator().manual_seed(0), prune_rows=False)
    assert calls == [2 * n_sets] * 5 and cn_rows == [2 * n_video] * 5
    assert out.shape == (2, *micro_model.grid) and out.min() >= 0 and out.max() < micro_model.backbone.vocab_size


def test_generate_inpainting_and_determinism(micro_model):
    x = micro_inputs(micro_model, b=2)
    known_mask = torch.zeros(2, *micro_model.grid, dtype=torch.bool)
    known_mask[:, :, :5] = True
    kw = dict(known_codes=x["codes"], known_mask=known_mask, steps=6)
    a = micro_model.generate(x["features"], x["text"], generator=torch.Generator().manual_seed(1), **kw)
    b = micro_model.generate(x["features"], x["text"], generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b)
    assert torch.equal(a[known_mask], x["codes"][known_mask])


def test_guided_sampling_step_uses_cfg_scale(micro_model, monkeypatch):
    seen = []
    rule = GUIDANCE.build("multi", scale=2.0)
    orig = rule.combine
    monkeypatch.setattr(rule, "combine", lambda logits, s: seen.append(s) or orig(logits, s))
    x = micro_inputs(micro_model)
    micro_model.generate(x["features"], x["text"], steps=5, guidance=rule, generator=torch.Generator().manual_seed(0))
    assert seen == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    seen.clear()
    micro_model.generate(x["features"], x["text"], steps=3, cfg_scale=4.0, guidance=rule, generator=torch.Generator().manual_seed(0))
    assert seen == pytest.approx([0.0, 2.0, 4.0])


def test_a_user_rule_whose_combine_returns_another_shape_is_named() -> None:
    """A GuidanceRule.combine that drops the vocabulary axis fails at the first guided step, named,
    instead of sampling from the wrong logits."""
    from conftest import micro_inputs, micro_overrides

    from controlfoley import build_model
    from controlfoley.errors import ShapeError
    from controlfoley.guidance import CFG

    class Truncating(CFG):
        def combine(self, logits, scale):
            return super().combine(logits, scale)[..., :10]

    model = build_model("specmaskfoley_tiny", **micro_overrides()).eval()
    x = micro_inputs(model, b=1)
    with pytest.raises(ShapeError, match=r"combine returned \[1, \d+, 10\]; it must return logits shaped like each condition's"):
        model.generate(x["features"], guidance=Truncating("video"), steps=3)


CPU = torch.device("cpu")


def test_a_known_token_equal_to_the_vocab_size_is_refused() -> None:
    sampler = MaskGITSampler(steps=2)
    known = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ShapeError, match=r"known token ids must be in \[0, 7\)"):
        sampler.initial(1, 4, 7, CPU, torch.full((1, 4), 7), known)
    codes, mask = sampler.initial(1, 4, 7, CPU, torch.full((1, 4), 6), known)
    assert codes.eq(6).all() and not mask.any()


def test_the_mask_schedule_counts_only_the_tokens_unknown_at_the_start() -> None:
    """N in floor(N * gamma(r)) is each row's number of unknown tokens at the start, not the row length."""
    n, v, steps = 16, 5, 4
    known = torch.zeros(2, n, dtype=torch.bool)
    known[0, :8] = True  # 8 unknown
    known[1, :4] = True  # 12 unknown
    seen: list[list[int]] = []

    def logits_fn(codes, mask, k, n_steps):
        seen.append(mask.sum(dim=1).tolist())
        return torch.zeros(codes.shape[0], n, v)

    sampler = MaskGITSampler(steps=steps, temperature=1.0, mask_schedule="cosine")
    out = sampler.sample(logits_fn, batch=2, n_tokens=n, vocab_size=v, known_codes=torch.zeros(2, n, dtype=torch.long),
                         known_mask=known, generator=torch.Generator().manual_seed(0))
    # cos(pi/2 * r) at r = 1/4, 2/4, 3/4: 0.924, 0.707, 0.383 -> floor(8 g) = 7, 5, 3; floor(12 g) = 11, 8, 4
    assert seen == [[8, 12], [7, 11], [5, 8], [3, 4]]
    assert out.shape == (2, n)


def test_a_step_whose_target_rounds_to_zero_still_keeps_one_token_masked():
    """Before the last step at least one token stays masked (google-research/maskgit's clamp,
    max(1, min(masked_now - 1, target))): with 3 unknown tokens, step 10 of 12 has floor(3 * 0.13) = 0
    as its target, and keeps 1 (also when only 1 is masked: it waits for the last step)."""
    assert masked_count(10, 12, torch.tensor([3]), torch.tensor([3])).tolist() == [1]
    assert masked_count(10, 12, torch.tensor([3]), torch.tensor([1])).tolist() == [1]
    assert masked_count(11, 12, torch.tensor([3]), torch.tensor([1])).tolist() == [0]  # the last step unmasks all


# -- mask schedules: a registry -------------------------------------------------------------------
def sqrt_schedule(r):
    """1 - sqrt(r): convex (MaskGIT's ablation), far from cosine: most tokens decided early."""
    return 1.0 - r**0.5


def dipping_schedule(r):
    """gamma(0) = 1, gamma(1) = 0, within [0, 1], but it rises again after r = 0.5 (0.05 -> 0.14 at 0.75)."""
    sin = torch.sin if isinstance(r, torch.Tensor) else math.sin
    return (1.0 - r) * (1.0 - 0.9 * sin(math.pi * r) ** 2)


def old_training_mask(batch: int, n_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """masked_token_mask as it was before mask schedules were a registry (the cosine rule, written in)."""
    r = torch.rand(batch, generator=generator)
    n_mask = torch.ceil(torch.cos(math.pi / 2 * r) * n_tokens).long().clamp(1, n_tokens)
    ranks = torch.rand(batch, n_tokens, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks < n_mask[:, None]


def old_masked_count(step, n_steps, n_unknown, masked_now, schedule="cosine"):
    """masked_count as it was, with the cosine rule written in."""
    if step >= n_steps - 1:
        return torch.zeros_like(masked_now)
    target = torch.floor(n_unknown.double() * math.cos(math.pi / 2 * ((step + 1) / n_steps))).long()
    return torch.minimum(target.clamp(min=1), (masked_now - 1).clamp(min=0))


def test_a_registered_mask_schedule_is_built_by_name_and_sets_the_masked_counts() -> None:
    """A user's schedule, named in the sampler settings, is what build_model's sampler decodes with:
    after step k of K, floor(N gamma((k + 1) / K)) tokens stay masked (at least 1, fewer than before),
    which for 1 - sqrt(r) is not what cosine leaves."""
    from conftest import micro_overrides, registered

    from controlfoley import MASK_SCHEDULES, build_model

    with registered(MASK_SCHEDULES, "test_sqrt", sqrt_schedule):
        assert "test_sqrt" in MASK_SCHEDULES.names()
        model = build_model("specmaskfoley_tiny", **micro_overrides(), sampler={"mask_schedule": "test_sqrt"}).eval()
        assert model.sampler.mask_schedule == "test_sqrt" and model.config.sampler.mask_schedule == "test_sqrt"
        x = micro_inputs(model, b=2)
        steps, n = 6, model.n_tokens
        seen: list[list[int]] = []
        model.generate(x["features"], x["text"], steps=steps, generator=torch.Generator().manual_seed(0),
                       callback=lambda k, n_steps, codes, mask: seen.append(mask.flatten(1).sum(1).tolist()))

    def want(gamma):
        left, out = n, []
        for k in range(steps):
            left = 0 if k == steps - 1 else min(max(math.floor(n * gamma((k + 1) / steps)), 1), left - 1)
            out.append([left, left])
        return out

    assert seen == want(sqrt_schedule)
    assert seen != want(lambda r: math.cos(math.pi / 2 * r))  # the schedule changed the counts


def test_a_model_builds_under_a_meta_default_device() -> None:
    """`with torch.device("meta"): build_model(...)` (a model's shapes without its memory) failed on
    the first use of a mask schedule: its check read a tensor back (.item()) that the context had
    put on the meta device. The check now runs on the CPU under any default device."""
    from conftest import micro_overrides, registered

    from controlfoley import MASK_SCHEDULES, build_model

    with registered(MASK_SCHEDULES, "test_sqrt_meta", sqrt_schedule):  # a name not yet checked in this process
        with torch.device("meta"):
            model = build_model("specmaskfoley_tiny", **micro_overrides(), sampler={"mask_schedule": "test_sqrt_meta"})
    assert {p.device.type for p in model.parameters()} == {"meta"} and model.sampler.mask_schedule == "test_sqrt_meta"


def test_a_schedule_name_is_looked_up_when_the_sampler_is_built_and_an_unknown_one_is_the_registry_error() -> None:
    """The config takes any name (a plugin may register it later); the sampler looks it up: an unknown
    name is the registry's error, with the names registered and how to register one."""
    from conftest import micro_overrides, registered

    from controlfoley import MASK_SCHEDULES, RegistryError, SamplerConfig, build_model
    from controlfoley.config import ConfigError

    later = SamplerConfig(mask_schedule="test_later")  # not registered yet: fine for a config
    with pytest.raises(RegistryError, match=r"unknown mask_schedule 'test_later'\. Registered mask_schedules: cosine, cubic, linear, square\. "
                                            r"Register your own with @controlfoley\.MASK_SCHEDULES\.register\(name\)"):
        MaskGITSampler(later.steps, later.temperature, later.mask_schedule)
    with registered(MASK_SCHEDULES, "test_later", sqrt_schedule):
        assert MaskGITSampler(later.steps, later.temperature, later.mask_schedule).mask_schedule == "test_later"
    with pytest.raises(RegistryError, match=r"unknown mask_schedule 'cubc'\. Did you mean 'cubic'\?"):
        build_model("specmaskfoley_tiny", **micro_overrides(), sampler={"mask_schedule": "cubc"})
    with pytest.raises(RegistryError, match="unknown mask_schedule 'cubc'"):
        masked_count(0, 4, torch.tensor([10]), torch.tensor([10]), "cubc")
    with pytest.raises(ConfigError, match=r"sampler\.mask_schedule must be the name of a registered mask schedule .*got ''"):
        SamplerConfig(mask_schedule="")


@pytest.mark.parametrize(
    ("gamma", "match"),
    [
        (dipping_schedule, r"increases: gamma\(0\.5\) = 0\.05 < gamma\(0\.5625\) = 0\.0587362;"),
        (lambda r: 1.5 * (1.0 - r), r"gives gamma\(0\.0\) = 1\.5, outside \[0, 1\]"),
        (lambda r: 1.0 - 2.0 * r, r"gives gamma\(0\.5625\) = -0\.125, outside \[0, 1\]"),
        (lambda r: 0.9 * (1.0 - r), r"gives gamma\(0\) = 0\.9 and gamma\(1\) = 0;"),
    ],
    ids=["increasing", "above_one", "negative", "not_one_at_zero"],
)
def test_a_schedule_that_breaks_the_rule_is_refused_when_the_sampler_is_made(gamma, match) -> None:
    """gamma(r) is a fraction still masked: a schedule that leaves [0, 1], misses gamma(0) = 1 or
    gamma(1) = 0, or rises is a ConfigError naming it and the rule, before anything is sampled."""
    from conftest import micro_overrides, registered

    from controlfoley import MASK_SCHEDULES, build_model
    from controlfoley.config import ConfigError

    rule = r"gamma\(0\) = 1, gamma\(1\) = 0, non-increasing in between and within \[0, 1\]; fix the function registered as 'test_bad'"
    with registered(MASK_SCHEDULES, "test_bad", gamma):
        with pytest.raises(ConfigError, match=r"mask schedule 'test_bad' \(test_sampling\.") as e:
            MaskGITSampler(steps=8, mask_schedule="test_bad")
        assert re.search(match, str(e.value)) and re.search(rule, str(e.value)), str(e.value)
        with pytest.raises(ConfigError, match=match):
            build_model("specmaskfoley_tiny", **micro_overrides(), sampler={"mask_schedule": "test_bad"})


def test_a_schedule_that_takes_only_floats_is_refused_for_the_training_mask() -> None:
    from conftest import registered

    from controlfoley import MASK_SCHEDULES
    from controlfoley.config import ConfigError

    with registered(MASK_SCHEDULES, "test_floats", lambda r: math.cos(math.pi / 2 * r)):
        with pytest.raises(ConfigError, match=r"mask schedule 'test_floats' .*failed on a Tensor of ratios.*use torch functions, e\.g\. torch\.cos"):
            MaskGITSampler(mask_schedule="test_floats")


def test_the_default_cosine_schedule_gives_the_same_counts_tokens_and_training_masks_as_before(monkeypatch) -> None:
    """Cosine through the registry is the old arithmetic exactly: math.cos on floats (the sampler's
    counts), torch.cos on tensors (the training mask), so sampling and training draw as before."""
    import controlfoley.sampling as sampling
    from controlfoley import MASK_SCHEDULES
    from controlfoley.model import masked_token_mask

    cosine = MASK_SCHEDULES.get("cosine")
    for n_steps in (1, 7, 12, 64):
        for k in range(n_steps + 1):
            assert cosine(k / n_steps) == math.cos(math.pi / 2 * (k / n_steps))
    r = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cosine(r), torch.cos(math.pi / 2 * r))
    for seed in range(3):
        for b, n in ((1, 1), (5, 265), (64, 37)):
            old = old_training_mask(b, n, torch.Generator().manual_seed(seed))
            assert torch.equal(masked_token_mask(b, n, torch.Generator().manual_seed(seed), CPU), old)
            assert torch.equal(masked_token_mask(b, n, torch.Generator().manual_seed(seed), CPU, schedule="cosine"), old)

    def sample() -> torch.Tensor:
        return MaskGITSampler(steps=12).sample(Recorder(32, 1), batch=3, n_tokens=265, vocab_size=32, generator=torch.Generator().manual_seed(4))

    new = sample()
    monkeypatch.setattr(sampling, "masked_count", old_masked_count)
    assert torch.equal(new, sample())


def expected_masked_fraction(gamma, n_tokens: int) -> float:
    """E[ceil(gamma(r) l) / l] for r ~ U(0, 1) and a decreasing gamma: the count is >= k exactly when
    gamma(r) > (k - 1) / l, i.e. r < gamma^-1((k - 1) / l), so E[count] = sum_k gamma^-1((k - 1) / l)."""
    inverse = {"linear": lambda x: 1.0 - x, "cosine": lambda x: 2.0 / math.pi * math.acos(x)}[gamma]
    return sum(inverse((k - 1) / n_tokens) for k in range(1, n_tokens + 1)) / n_tokens


@pytest.mark.parametrize(("schedule", "near"), [("linear", 0.5), ("cosine", 2 / math.pi)])
def test_the_training_mask_follows_its_schedule(schedule: str, near: float) -> None:
    """r ~ U(0, 1), ceil(gamma(r) l) of l tokens masked: linear masks (l + 1) / 2l on average (0.505 for
    l = 100), cosine 2/pi + ~1/2l (0.642); 20,000 draws put the mean within ~0.002 (one standard error)."""
    from controlfoley.model import masked_token_mask

    n = 100
    want = expected_masked_fraction(schedule, n)
    assert abs(want - near) < 0.006  # the expectation, next to its continuous limit
    mask = masked_token_mask(20_000, n, torch.Generator().manual_seed(0), CPU, schedule=schedule)
    counts = mask.sum(1)
    assert counts.min() >= 1 and counts.max() <= n
    assert abs(mask.float().mean().item() - want) < 0.01


def test_loss_and_the_training_recipe_mask_with_the_samplers_schedule(monkeypatch) -> None:
    """model.loss draws its mask from the model's sampler schedule unless told another; the backbone
    and controlnet recipes' step plans do too (MaskGIT trains with the gamma it samples with)."""
    from conftest import micro_overrides

    from controlfoley import build_model
    from controlfoley.model import masked_token_mask
    from controlfoley.train import TrainConfig
    from controlfoley.train.recipes import get_recipe, step_generator

    model = build_model("specmaskfoley_tiny", **micro_overrides(), sampler={"mask_schedule": "linear"})
    x = micro_inputs(model, b=8)
    masks: list[torch.Tensor] = []
    real = model.masked_cross_entropy
    monkeypatch.setattr(model, "masked_cross_entropy", lambda flat, mask, **kw: masks.append(mask) or real(flat, mask, **kw))
    for schedule in (None, "cosine"):
        model.loss(x["codes"], features=x["features"], cond=x["text"], generator=torch.Generator().manual_seed(3), mask_schedule=schedule)
    linear, cosine = (masked_token_mask(8, model.n_tokens, torch.Generator().manual_seed(3), CPU, s) for s in ("linear", "cosine"))
    assert torch.equal(masks[0], linear) and torch.equal(masks[1], cosine) and not torch.equal(linear, cosine)

    for recipe_name in ("backbone", "controlnet"):
        recipe, cfg = get_recipe(recipe_name), TrainConfig.for_recipe(recipe_name, preset="p", data="d", out="o", seed=5)
        got = recipe.plan(cfg, model, 2, 8).rows["mask"]
        assert torch.equal(got, masked_token_mask(8, model.n_tokens, step_generator(5, 2), CPU, "linear"))
        default = build_model("specmaskfoley_tiny", **micro_overrides())  # cosine: the masks of before
        assert torch.equal(recipe.plan(cfg, default, 2, 8).rows["mask"], old_training_mask(8, default.n_tokens, step_generator(5, 2)))


def test_a_checkpoint_with_a_plugin_schedule_names_where_it_came_from(tmp_path) -> None:
    """A model saved with a user's schedule, loaded where it is not registered, says which module
    registered it (as for a plugin's part); registered again, it loads with that schedule."""
    from conftest import micro_overrides, registered

    from controlfoley import MASK_SCHEDULES, build_model, from_pretrained
    from controlfoley.errors import CheckpointError

    with registered(MASK_SCHEDULES, "test_saved", sqrt_schedule):
        build_model("specmaskfoley_tiny", **micro_overrides(), sampler={"mask_schedule": "test_saved"}).save(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"unknown mask_schedule 'test_saved'.*its sampler\.mask_schedule came from test_sampling \(.*test_sampling\.py\)"):
        from_pretrained(tmp_path / "m.safetensors")
    with registered(MASK_SCHEDULES, "test_saved", sqrt_schedule):
        assert from_pretrained(tmp_path / "m.safetensors").sampler.mask_schedule == "test_saved"


def test_with_fewer_unknown_tokens_than_steps_the_last_one_waits_for_the_last_step():
    """google-research/maskgit's clamp, max(1, min(masked_now - 1, target)): before the last step
    one token stays masked even when that means no progress, so it is decided at the last step (full
    CFG scale, no choice noise), not early at a small scale. 5 unknown tokens, 12 steps."""
    counts, left = [], torch.tensor([5])
    for k in range(12):
        left = masked_count(k, 12, torch.tensor([5]), left)
        counts.append(int(left))
    assert counts == [4, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    assert masked_count(3, 12, torch.tensor([5]), torch.tensor([0])).tolist() == [0]  # nothing masked: nothing to re-mask


def test_known_tokens_stay_known_when_guided_logits_are_not_finite() -> None:
    """A NaN confidence (non-finite logits at a masked position: an inf - inf of a bf16 overflow
    in a CFG difference, or a user guidance rule) sorted after the known tokens' +inf, so a known
    token was re-masked and resampled: [5, 5, ...] given came out [0, 0, 5, ...]."""
    from controlfoley.sampling import MaskGITSampler

    b, l, v = 1, 12, 8
    known_mask = torch.zeros(b, l, dtype=torch.bool)
    known_mask[0, :6] = True
    known = torch.full((b, l), 5, dtype=torch.long)

    def logits_fn(codes: torch.Tensor, mask: torch.Tensor, k: int, n: int) -> torch.Tensor:
        out = torch.zeros(b, l, v)
        out[..., 0] = 4.0  # every sampled token would be 0
        out[0, 9:] = float("nan")  # three masked positions have NaN logits
        return out

    seen: list[torch.Tensor] = []
    out = MaskGITSampler(steps=4).sample(
        logits_fn, batch=b, n_tokens=l, vocab_size=v, known_codes=known, known_mask=known_mask,
        generator=torch.Generator().manual_seed(0), callback=lambda k, n, c, m: seen.append(m[0, :6].clone()),
    )  # fmt: skip
    assert not any(m.any() for m in seen)  # a known position is never masked again
    assert out[0, :6].tolist() == [5] * 6
