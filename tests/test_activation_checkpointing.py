"""Activation checkpointing (`SpecMaskFoley.enable_activation_checkpointing`, `--activation-checkpointing`):
the same loss and gradients, fewer bytes kept for the backward pass (counted, not timed), the
state_dict and sampling unchanged, user backbones, and the training config, flag and resume."""

import copy
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import micro_inputs, micro_overrides, registered
from test_train import config, final_state, write_data
from torch import nn

import controlfoley.backbones.base as backbone_base
from controlfoley import BACKBONES, build_model, from_pretrained
from controlfoley.config import ConfigError
from controlfoley.model import SpecMaskFoley
from controlfoley.train import TrainConfig, train
from controlfoley.train.cli import build_parser, config_from_args
from controlfoley.train.cli import main as train_main


@pytest.fixture
def recomputed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the blocks run under torch.utils.checkpoint (one entry per call)."""
    calls: list[int] = []
    real = backbone_base.checkpoint

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(backbone_base, "checkpoint", counting)
    yield calls


def controlnet_model() -> SpecMaskFoley:
    """The micro model as the ControlNet recipe trains it, its zero-initialised linears made
    non-zero so that every ControlNet block gets a gradient."""
    torch.manual_seed(0)
    model = build_model("specmaskfoley_tiny", **micro_overrides()).train().freeze_backbone()
    assert model.controlnet is not None
    for lin in (model.controlnet.cond_in, *model.controlnet.outs):
        nn.init.normal_(lin.weight, std=0.05)
    return model


def backbone_model() -> SpecMaskFoley:
    """The micro backbone alone, as the backbone recipe trains it."""
    torch.manual_seed(0)
    small = {k: v for k, v in micro_overrides().items() if k in ("tokenizer", "backbone")}
    model = build_model("specmaskgit_tiny", **small).train()
    model.requires_grad_(False)
    model.backbone.requires_grad_(True)
    return model


def inputs(model: SpecMaskFoley, b: int = 2) -> dict[str, Any]:
    """conftest's micro_inputs; for a model without video, its text and codes alone."""
    if model.has_control:
        return micro_inputs(model, b)
    g = torch.Generator().manual_seed(0)
    return {"text": torch.randn(b, model.backbone.cond_dim, generator=g), "codes": torch.randint(0, model.backbone.vocab_size, (b, *model.grid), generator=g)}


def step(model: SpecMaskFoley, x: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Loss, the gradient of every trainable parameter, and the bytes autograd keeps for the
    backward pass (saved tensors, each storage once, parameters left out: activations only)."""
    model.zero_grad(set_to_none=True)
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    features = x.get("features")
    torch.manual_seed(1)  # dropout of a user backbone's blocks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = model.loss(x["codes"], features=features, cond=x["text"], uncond_prob=0.5, generator=torch.Generator().manual_seed(1))
    loss.backward()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return loss.detach(), grads, sum(v for k, v in kept.items() if k not in params)


def n_blocks(model: SpecMaskFoley) -> int:
    return len(model.backbone.blocks) + (len(model.controlnet.blocks) if model.controlnet is not None else 0)


@pytest.mark.parametrize("setup", [controlnet_model, backbone_model], ids=["controlnet", "backbone"])
def test_same_loss_and_gradients_with_fewer_bytes_kept(setup: Any, recomputed: list[int]) -> None:
    model = setup()
    x = inputs(model, b=3)
    loss, grads, kept = step(model, x)
    assert model.enable_activation_checkpointing() is model and model.activation_checkpointing
    loss_ckpt, grads_ckpt, kept_ckpt = step(model, x)
    assert kept_ckpt < 0.5 * kept, (kept_ckpt, kept)  # measured about 1/5
    assert len(recomputed) == n_blocks(model)  # every block of the backbone and the ControlNet, once per forward
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == set(grads_ckpt) == trainable  # every trainable parameter got a gradient
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    for name, g in grads.items():  # exact on the CPU in fp32: the same operations, recomputed
        torch.testing.assert_close(grads_ckpt[name], g, rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")
    model.enable_activation_checkpointing(False)
    assert not model.activation_checkpointing
    assert all("forward" not in b.__dict__ for b in model.modules())  # the classes' forwards again
    assert step(model, x)[2] == kept


def test_state_dict_save_load_and_copies_are_unchanged(tmp_path: Path) -> None:
    model = controlnet_model()
    before = model.state_dict()
    model.enable_activation_checkpointing()
    model.enable_activation_checkpointing()  # twice: one wrapper
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert [n for n, _ in model.named_modules()] == [n for n, _ in controlnet_model().named_modules()]
    assert model.backbone.blocks[0].forward.inner is None
    # the ControlNet's copy of the backbone blocks reads blocks[i].state_dict()
    assert model.controlnet is not None and model.controlnet.differs_from(model.backbone) is False
    model.controlnet.copy_from(model.backbone)
    # strict loads, save and from_pretrained: a loaded model has the setting off (not a weight)
    other = controlnet_model().enable_activation_checkpointing()
    other.load_state_dict(before, strict=True)
    loaded = from_pretrained(model.save(tmp_path / "m.safetensors"))
    assert not loaded.activation_checkpointing
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in before.items())
    loaded.train().freeze_backbone().enable_activation_checkpointing()
    x = micro_inputs(model, b=2)
    # deepcopy and pickle take the setting along, each copy's blocks recomputing themselves
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), loaded):
        assert twin.activation_checkpointing
        assert all(b.forward.block is b for b in (*twin.backbone.blocks, *twin.controlnet.blocks))
        model.zero_grad(set_to_none=True)
        twin_grads = step(twin, x)[1]
        assert all(p.grad is None for p in model.parameters())  # the copy's blocks ran on the copy's weights
        torch.testing.assert_close(twin_grads, step(model, x)[1], rtol=0, atol=0)


def test_a_deleted_model_frees_its_blocks_at_once() -> None:
    """A block whose forward held the block itself was a reference cycle: `del model` kept every
    block's weights alive until the garbage collector's next full pass (GPU memory a notebook
    expects back). The forward holds its block weakly; with the collector off, the weights go with
    the model, as they do without checkpointing."""
    import gc
    import weakref

    enabled = gc.isenabled()
    gc.disable()
    try:
        for on in (False, True):
            model = controlnet_model().enable_activation_checkpointing(on)
            assert model.activation_checkpointing is on
            weight = weakref.ref(next(model.backbone.blocks[0].parameters()))
            del model
            assert weight() is None, f"activation checkpointing {on}: a block's weights outlived the model"
    finally:
        if enabled:
            gc.enable()


def test_sampling_is_unchanged(recomputed: list[int]) -> None:
    model = controlnet_model()
    x = micro_inputs(model, b=2)

    def sample() -> torch.Tensor:
        return model.generate(x["features"], x["text"], steps=3, generator=torch.Generator().manual_seed(0))

    plain = sample()
    model.enable_activation_checkpointing()
    assert torch.equal(sample(), plain) and model.training  # generate: eval mode inside, the model's mode after
    with torch.no_grad():  # a training-mode forward without grad (validation) keeps nothing to recompute
        model.loss(x["codes"], features=x["features"], generator=torch.Generator().manual_seed(0))
    assert recomputed == []


class EncoderLayers(nn.Module):
    """A user backbone whose blocks are torch's nn.TransformerEncoderLayer, with dropout."""

    def __init__(self, *, vocab_size: int, grid: list, dim: int = 32, depth: int = 2, heads: int = 2, cond_dim: int = 16) -> None:
        super().__init__()
        self.vocab_size, self.dim, self.cond_dim, self.heads = vocab_size, dim, cond_dim, heads
        self.tok = nn.Embedding(vocab_size + 1, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, grid[0] * grid[1], dim))
        self.text = nn.Linear(cond_dim, dim)
        self.blocks = nn.ModuleList(self.new_block() for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab_size)

    def new_block(self) -> nn.Module:
        return nn.TransformerEncoderLayer(self.dim, self.heads, 2 * self.dim, dropout=0.2, batch_first=True, norm_first=True)

    def embed(self, codes: torch.Tensor, mask: torch.Tensor, cond: Any = None, cond_on: Any = None) -> torch.Tensor:
        x = self.tok(codes.masked_fill(mask, self.vocab_size)) + self.pos
        if cond is not None:
            on = torch.ones(codes.shape[0], dtype=torch.bool) if cond_on is None else cond_on
            x = x + torch.where(on[:, None, None], self.text(cond)[:, None, :], 0.0)
        return x

    def layers(self) -> nn.ModuleList:
        return self.blocks

    def forward_blocks(self, x: torch.Tensor, residuals: Any = None) -> torch.Tensor:
        for i, blk in enumerate(self.layers()):
            x = blk(x)
            if residuals is not None and i < len(residuals) and residuals[i] is not None:
                x = x + residuals[i]
        return x

    def logits(self, h: torch.Tensor, index: Any = None) -> torch.Tensor:
        if index is not None:
            h = h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))
        return self.head(self.norm(h))


class UnlistedLayers(EncoderLayers):
    """The same blocks kept under another name: a backbone-only model builds without `blocks`."""

    def __init__(self, *, vocab_size: int, grid: list, dim: int = 32, heads: int = 2, cond_dim: int = 16) -> None:
        super().__init__(vocab_size=vocab_size, grid=grid, dim=dim, heads=heads, cond_dim=cond_dim)
        self.stack = self.blocks
        del self.blocks

    def layers(self) -> nn.ModuleList:
        return self.stack


def test_a_user_backbone_recomputes_its_blocks_and_one_without_blocks_is_named(recomputed: list[int]) -> None:
    small = {"name": "test_ac_layers", "dim": 32, "heads": 2, "cond_dim": 16}
    with registered(BACKBONES, "test_ac_layers", EncoderLayers), registered(BACKBONES, "test_ac_unlisted", UnlistedLayers):
        torch.manual_seed(0)
        model = build_model("specmaskfoley_tiny", **{**micro_overrides(), "backbone": small}).train().freeze_backbone()
        x = micro_inputs(model, b=2)
        loss, grads, kept = step(model, x)
        loss_ckpt, grads_ckpt, kept_ckpt = step(model.enable_activation_checkpointing(), x)
        assert len(recomputed) == n_blocks(model)
        torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)  # the same dropout masks, recomputed
        torch.testing.assert_close(grads_ckpt, grads, rtol=0, atol=0)
        assert kept_ckpt < 0.5 * kept
        alone = build_model("specmaskgit_tiny", tokenizer=micro_overrides()["tokenizer"], backbone={**small, "name": "test_ac_unlisted"})
        with pytest.raises(ConfigError, match=r"backbone 'test_ac_unlisted' \(UnlistedLayers\) has no `blocks`; give it `blocks`"):
            alone.enable_activation_checkpointing()
        assert all("forward" not in m.__dict__ for m in alone.modules())
        alone.enable_activation_checkpointing(False)  # nothing to switch off: no error


# -- training: config, flag, resume ----------------------------------------------------------------
def test_the_flag_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--preset", "specmaskfoley_tiny", "--data", "d", "--out", "o"]
    assert config_from_args(build_parser().parse_args(["controlnet", *args, "--activation-checkpointing"])).activation_checkpointing
    assert not config_from_args(build_parser().parse_args(["backbone", *args])).activation_checkpointing
    cfg = TrainConfig.for_recipe("backbone", preset="p", data="d", out="o", activation_checkpointing=True)
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert cfg.resume_conflicts(cfg.replace(activation_checkpointing=False)) == {}  # switched on or off on resume
    # the tokenizer recipe has no transformer blocks: refused in Python and in a --config file, no flag on its command line
    with pytest.raises(ConfigError, match=r"activation_checkpointing \(--activation-checkpointing\) .* the tokenizer recipe trains the tokenizer"):
        TrainConfig.for_recipe("tokenizer", preset="p", data="d", out="o", activation_checkpointing=True)
    (tmp_path / "c.json").write_text(json.dumps({"activation_checkpointing": True}))
    assert train_main(["tokenizer", *args, "--config", str(tmp_path / "c.json"), "--print-config"]) == 2
    assert "the tokenizer recipe trains the tokenizer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tokenizer", *args, "--activation-checkpointing"])
    with pytest.raises(SystemExit):
        train_main(["tokenizer", "--help"])
    assert "--activation-checkpointing" not in capsys.readouterr().out


def test_a_run_trains_with_it_and_resumes_with_it_switched(tmp_path: Path, recomputed: list[int]) -> None:
    """Two ControlNet steps: plain, and with checkpointing resumed after step 1 without it: the
    same weights, bit for bit on the CPU."""
    data = write_data(tmp_path / "ds", n=8)
    kw: dict[str, Any] = {"steps": 2, "warmup_steps": 0, "base_lr": 0.1}
    with pytest.warns(UserWarning, match="without --init"):
        train(config("controlnet", data, tmp_path / "plain", **kw))
    assert recomputed == []
    with pytest.warns(UserWarning, match="without --init"):
        train(config("controlnet", data, tmp_path / "ckpt", activation_checkpointing=True, **kw), stop_at=1)
    assert len(recomputed) == 3 + 2  # one micro-batch: the micro model's 3 backbone and 2 ControlNet blocks
    assert train_main(["controlnet", "--out", str(tmp_path / "ckpt"), "--resume", "--no-activation-checkpointing"]) == 0
    assert len(recomputed) == 5
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["activation_checkpointing"] is False
    plain, ckpt = final_state(tmp_path / "plain"), final_state(tmp_path / "ckpt")
    assert list(plain) == list(ckpt) and all(torch.equal(plain[k], ckpt[k]) for k in plain)
    resumed = ["controlnet", "--out", str(tmp_path / "ckpt"), "--resume", "--activation-checkpointing"]
    assert train_main([*resumed, "--steps", "3"]) == 2  # other settings are still refused
