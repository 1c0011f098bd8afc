"""`controlfoley bench`: it runs the model it is given with the settings it is given, reports one row
per batch size, and names every bad argument before timing anything. No timed assertions: only the
shape of the report and the calls made are checked."""

import logging

import pytest
import torch

from controlfoley import build_model
from controlfoley.bench import random_inputs, time_interleaved
from controlfoley.cli import main as cli_main
from controlfoley.errors import ConfigError


def _bench(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(["bench", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _table_rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]


def test_bench_a_preset_at_two_batch_sizes(capsys):
    rc, out, err = _bench(capsys, "specmaskfoley_tiny", "--batch", "1", "3", "--runs", "1", "--warmup", "0", "--steps", "2", "--decode", "--markdown")
    assert rc == 0, err
    header, *rows = _table_rows(out)
    assert header == ["batch", "median s", "min s", "CPU s", "s per clip", "clips/s", "s per s audio", "decode s per clip", "vocoder s per clip"]
    assert [r[0] for r in rows] == ["1", "3"]
    for r in rows:
        wall, per_clip, rate = float(r[1]), float(r[4]), float(r[5])
        assert wall > 0 and per_clip == pytest.approx(wall / int(r[0]), rel=0.01) and rate == pytest.approx(int(r[0]) / wall, rel=0.01)
    assert "preset specmaskfoley_tiny: 2 steps, guidance MultiCFG" in out and "precision auto (float32)" in out


def test_bench_a_saved_checkpoint_and_a_backbone(tmp_path, capsys):
    model = build_model("specmaskfoley_tiny")
    model.save(tmp_path / "m.safetensors")
    rc, out, err = _bench(capsys, str(tmp_path / "m.safetensors"), "--runs", "1", "--steps", "2", "--guidance", "cfg_video")
    assert rc == 0, err
    assert f"checkpoint {tmp_path / 'm.safetensors'}" in out and "guidance CFG" in out
    # a backbone alone: no video features, its text-only guidance
    rc, out, err = _bench(capsys, "specmaskgit_tiny", "--runs", "1", "--steps", "2", "--precision", "bf16-weights")
    assert rc == 0, err
    assert "(bfloat16)" in out


def test_bench_calls_generate_with_the_settings(monkeypatch, capsys, caplog):
    calls = []
    original = type(build_model("specmaskfoley_tiny")).generate

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(build_model("specmaskfoley_tiny")), "generate", spy)
    rc, _, err = _bench(capsys, "specmaskfoley_tiny", "--runs", "2", "--warmup", "1", "--steps", "3", "--precision", "bf16", "--batch", "2")
    assert rc == 0, err
    assert len(calls) == 3  # one warm-up, two timed
    assert all(c["steps"] == 3 and c["dtype"] == torch.bfloat16 and not c["compile"] and not c["cuda_graph"] and c["guidance_every"] == 1 for c in calls)
    calls.clear()
    rc, out, err = _bench(capsys, "specmaskfoley_tiny", "--runs", "1", "--warmup", "0", "--steps", "3", "--guidance-every", "2")
    assert rc == 0, err
    assert [c["guidance_every"] for c in calls] == [2] and "guidance_every=2 (every condition set at one guided step in 2)" in out
    # a rule of one condition set runs it at every step anyway: generate gets 1, the label does not
    # claim the approximation, and the warning comes once, not once per call
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="controlfoley"):
        rc, out, err = _bench(capsys, "specmaskfoley_tiny", "--runs", "2", "--warmup", "1", "--steps", "3", "--guidance", "none", "--guidance-every", "2")
    assert rc == 0, err
    assert [c["guidance_every"] for c in calls] == [1, 1, 1] and "guidance_every" not in out
    assert sum("guidance_every=2 does nothing" in r.getMessage() for r in caplog.records) == 1
    # a rule without video gets no features (generate would warn at every timed call that they are ignored)
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="controlfoley"):
        rc, out, err = _bench(capsys, "specmaskfoley_tiny", "--runs", "1", "--warmup", "1", "--steps", "1", "--guidance", "cfg_text")
    assert rc == 0, err
    assert not any("is ignored" in r.getMessage() for r in caplog.records)


def test_bf16_weights_sample_a_bf16_model_natively(monkeypatch, capsys):
    """--precision bf16-weights: the sampling parts in bf16 (a ControlNet model fed fp32 features),
    sampled without autocast (no dtype passed); the tokenizer stays fp32, as in the pipeline."""
    seen = []
    cls = type(build_model("specmaskfoley_tiny"))
    original = cls.generate

    def spy(self, *args, **kwargs):
        seen.append((kwargs, {p.dtype for part in (self.backbone, *self.control_modules()) for p in part.parameters()}, {p.dtype for p in self.tokenizer.parameters()}))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "generate", spy)
    rc, _, err = _bench(capsys, "specmaskfoley_tiny", "--runs", "1", "--warmup", "0", "--steps", "2", "--precision", "bf16-weights")
    assert rc == 0, err
    assert len(seen) == 1 and "dtype" not in seen[0][0] and seen[0][1] == {torch.bfloat16} and seen[0][2] == {torch.float32}


def test_fp8_samples_static_fp8_block_linears_in_a_bf16_model(monkeypatch, capsys):
    """--precision fp8: the sampling parts in bf16, then every block linear (backbone and ControlNet
    copy) an Fp8Linear with static scales, sampled natively (no dtype passed); tokenizer fp32."""
    from controlfoley.quantize import Fp8Linear

    seen = []
    cls = type(build_model("specmaskfoley_tiny"))
    original = cls.generate

    def spy(self, *args, **kwargs):
        fp8 = [m for m in self.modules() if isinstance(m, Fp8Linear)]
        plain = [n for part in ("backbone", "controlnet") for n, m in getattr(self, part).blocks.named_modules() if type(m) is torch.nn.Linear]
        seen.append((kwargs, {m.granularity for m in fp8}, len(fp8), plain, {p.dtype for p in self.tokenizer.parameters()}))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "generate", spy)
    rc, out, err = _bench(capsys, "specmaskfoley_tiny", "--runs", "1", "--warmup", "0", "--steps", "2", "--precision", "fp8")
    assert rc == 0, err
    kwargs, granularities, n_fp8, plain, tok_dtypes = seen[0]
    assert "dtype" not in kwargs and granularities == {"static"} and n_fp8 > 0 and plain == [] and tok_dtypes == {torch.float32}
    assert "precision fp8 (float8_e4m3fn block linears, static scales; bfloat16 elsewhere)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["specmaskfoley_tiny", "--batch", "0"], "--batch 0"),
        (["specmaskfoley_tiny", "--runs", "0"], "--runs 0"),
        (["specmaskfoley_tiny", "--guidance-every", "0"], "--guidance-every 0"),
        (["specmaskfoley_tiny", "--cuda-graph"], "--cuda-graph needs a CUDA device"),
        (["no_such_model"], "neither a preset nor an existing checkpoint"),
        (["specmaskfoley_tiny", "--guidance", "bogus"], "unknown guidance 'bogus'"),
        (["specmaskfoley_tiny", "--device", "gpu0"], "is not a torch device"),
    ],
)
def test_bench_errors_exit_2(capsys, args, message):
    rc, out, err = _bench(capsys, *args)
    assert rc == 2 and message in err and "| batch" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_cuda_without_gpu(capsys):
    rc, _, err = _bench(capsys, "specmaskfoley_tiny", "--device", "cuda")
    assert rc == 2 and "no usable CUDA GPU" in err


def test_guidance_spec_cfg_scale_and_a_model_after_the_batch_sizes(monkeypatch, capsys):
    calls = []
    cls = type(build_model("specmaskfoley_tiny"))
    original = cls.generate

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "generate", spy)
    # the model after --batch's values (argparse would take it as a batch size)
    rc, out, err = _bench(capsys, "--batch", "1", "2", "specmaskfoley_tiny", "--runs", "1", "--warmup", "0", "--steps", "2",
                          "--guidance", "cfg,scale=5", "--cfg-scale", "2")  # fmt: skip
    assert rc == 0, err
    assert "preset specmaskfoley_tiny: 2 steps, guidance CFG(scale=5.0" in out and "final scale 2" in out
    assert all(c["cfg_scale"] == 2.0 and type(c["guidance"]).__name__ == "CFG" and c["guidance"].scale == 5.0 for c in calls)
    assert len(calls) == 2  # batch 1 and batch 2, one timed call each
    rc, _, err = _bench(capsys, "specmaskfoley_tiny", "--guidance", "cfg,scale")
    assert rc == 2 and "expected ARG=VALUE after the name" in err


def test_bench_leaves_openmp_as_the_environment_has_it(monkeypatch, capsys):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    rc, out, _ = _bench(capsys, "specmaskfoley_tiny", "--runs", "1", "--warmup", "0", "--steps", "1")
    assert rc == 0 and "OMP_WAIT_POLICY=unset" in out


def test_random_inputs_follow_the_model():
    model = build_model("specmaskfoley_tiny")
    feats, text = random_inputs(model, 2)
    assert set(feats) == set(model.control_encoder.required_features)
    assert all(v.shape[0] == 2 and v.shape[2] == model.control_encoder.feature_dims[k] for k, v in feats.items())
    assert {k: v.shape[1] for k, v in feats.items()} == {"sync": 142, "clip": 47}  # 5.94 s at 24 and 8 per second, as the pipeline feeds a window
    assert text.shape == (2, model.backbone.cond_dim)
    model.generate(feats, text, steps=1)  # shapes the model accepts
    del model.control_encoder.feature_dims
    with pytest.raises(ConfigError, match="give it a `feature_dims` mapping"):
        random_inputs(model, 1)


def test_time_interleaved_rounds():
    order = []
    t = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, runs=2, device="cpu")
    assert order == ["a", "b"] * 3
    assert len(t["a"].wall) == len(t["b"].cpu) == 2  # the warm-up round is not timed


def test_the_command_lines_offer_the_pipelines_precisions():
    """`generate` and `bench` list their --precision choices without importing torch (fast --help);
    they must stay the pipeline's PRECISIONS (bench adds fp8, for throughput studies only)."""
    from controlfoley import bench, generate_cli
    from controlfoley.pipeline import PRECISIONS

    def choices(parser):
        return tuple(next(a for a in parser._actions if a.dest == "precision").choices)

    assert choices(generate_cli._parser()) == tuple(PRECISIONS)
    assert choices(bench._parser()) == (*PRECISIONS, "fp8") == bench.PRECISION_CHOICES
