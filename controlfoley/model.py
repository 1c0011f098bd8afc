"""The composite model: mel front-end, tokenizer, backbone, optional video ControlNet, guidance,
MaskGIT sampler and vocoder, built from a `ModelConfig` by `build_model` (controlfoley.builder).

- `forward`: one batched pass; the ControlNet runs only on the rows flagged `control_on`.
- `loss`: the masked-token objective (MaskGIT): a mask ratio drawn from the sampler's mask
  schedule (cosine in the presets), cross-entropy on masked tokens, the CLAP condition replaced by
  the unconditional mask with probability `uncond_prob` (0.9 in SpecMaskFoley sec. 3.4), drawn
  per sample here; the paper drops it on 90% of the training *steps*, which the training recipes
  do (`uncond_per="step"`, one draw per step passed to `masked_cross_entropy` as `cond_on`).
- `generate`: MaskGIT sampling with every guidance condition set in ONE batched forward per step.
- `save` / `save_pretrained` / `from_pretrained`: safetensors, the config JSON in the file's metadata.

`build_model` (config -> parts -> this model, with the contract checks) lives in
`controlfoley.builder`; `from controlfoley.model import build_model` still works.
"""

import dataclasses
import functools
import inspect
import logging
import math
import numbers
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from controlfoley._static import BackboneModule, ControlEncoderModule, MelModule, TokenizerModule, VocoderModule
from controlfoley.backbones.base import check_logits, recompute_blocks, recomputes
from controlfoley.config import ConfigError, ModelConfig, SamplerConfig
from controlfoley.control.controlnet import ControlNet
from controlfoley.control.encoders import feature_dims
from controlfoley.errors import ShapeError, user_stacklevel
from controlfoley.fast import GuidedStep, checked_every, onednn_linear, precision, zero_scale_conditions
from controlfoley.guidance import UNCOND, Condition, GuidanceRule, check_rule, ignores_scale
from controlfoley.sampling import Generators, MaskGITSampler, StepCallback, check_generators, get_mask_schedule
from controlfoley.typing import Bool, Float, Int, Integer, Tensor

log = logging.getLogger("controlfoley.model")


def _in_eval_mode(fn: Any) -> Any:
    """Run a sampling method with every submodule in eval mode (dropout off, whatever a user part
    has), putting each module's own mode back afterwards: a model fresh from build_model, or in a
    training loop, samples as it does after .eval()."""

    @functools.wraps(fn)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        modes = [(m, m.training) for m in self.modules() if m.training]
        if not modes:
            return fn(self, *args, **kwargs)
        for m, _ in modes:
            m.training = False
        try:
            return fn(self, *args, **kwargs)
        finally:
            for m, mode in modes:
                m.training = mode

    return wrapper

__all__ = ["SpecMaskFoley", "build_model", "from_pretrained", "device_name", "masked_token_mask"]

_CONTROL_PARTS = ("control_encoder", "aligner", "controlnet")


def masked_token_mask(
    batch: int, n_tokens: int, generator: torch.Generator | None, device: torch.device, schedule: str = "cosine"
) -> Bool[Tensor, "b l"]:
    """Training mask (MaskGIT): ratio r ~ U(0,1), ceil(gamma(r) * l) tokens masked (clamped to [1, l]),
    chosen uniformly; gamma the mask schedule registered as `schedule` (`MASK_SCHEDULES`; cosine:
    cos(pi/2 r)), the one the model samples with."""
    gamma = get_mask_schedule(schedule)
    r = torch.rand(batch, generator=generator, device=device)
    g = gamma(r)
    assert isinstance(g, Tensor)  # get_mask_schedule checked that a Tensor of ratios gives a Tensor
    n_mask = torch.ceil(g * n_tokens).long().clamp(1, n_tokens)
    ranks = torch.rand(batch, n_tokens, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
    return ranks < n_mask[:, None]


class SpecMaskFoley(nn.Module):
    """Backbone (+ ControlNet branch when video control is configured), ready to train or sample."""

    # set after building, read with getattr (a model built here has none of them): which parts were
    # trained (None: unknown), by the checkpoint loader, load_state_dict and the training loop; the
    # extractors that made the training features; the file the weights came from (checkpoint.load_model);
    # the parts built otherwise than their loaded weights were trained, and what they were trained as
    # (checkpoint.TRAINED_AS_KEY: save writes it, so a file saved from such a model warns when loaded)
    trained_parts: set[str] | None
    trained_as: dict[str, dict[str, Any]]
    feature_record: dict[str, dict[str, Any]]
    loaded_from: str

    def __init__(
        self,
        *,
        config: ModelConfig,
        mel: MelModule,
        tokenizer: TokenizerModule,
        backbone: BackboneModule,
        guidance: GuidanceRule,
        sampler: MaskGITSampler,
        vocoder: VocoderModule,
        control_encoder: ControlEncoderModule | None = None,
        aligner: nn.Module | None = None,
        controlnet: ControlNet | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.mel, self.tokenizer, self.backbone, self.vocoder = mel, tokenizer, backbone, vocoder
        self.control_encoder, self.aligner, self.controlnet = control_encoder, aligner, controlnet
        self.guidance, self.sampler = guidance, sampler
        f, t = tokenizer.grid(config.n_frames)  # (F, T): build_model checked it is two ints
        self.grid: tuple[int, int] = (f, t)
        self.n_tokens = self.grid[0] * self.grid[1]

    def __setattr__(self, name: str, value: Any) -> None:
        """`model.config = model.config.override(sampler=..., guidance=...)` also rebuilds the
        sampler and the guidance rule that `generate` reads (they were built once, so a new config
        was saved but did not sample). The other parts are built once: a config naming other ones
        is recorded as given (loaders set the weights files they read this way); build_model(config)
        makes a model of them."""
        if name == "config" and "config" in self.__dict__ and isinstance(value, ModelConfig):
            old = self.__dict__["config"]
            if value.sampler != old.sampler:
                s = value.sampler
                sampler: Any = MaskGITSampler(s.steps, s.temperature, s.mask_schedule)  # (not a Module: torch's stub types Tensor | Module)
                super().__setattr__("sampler", sampler)
            if value.guidance != old.guidance:
                from controlfoley._registry import GUIDANCE
                from controlfoley.builder import _build_part

                super().__setattr__("guidance", _build_part(GUIDANCE, value.guidance))  # as build_model builds it
        super().__setattr__(name, value)

    def config_as_sampling(self) -> ModelConfig:
        """`config` with the sampler `generate` uses now (`model.sampler`, which code may have
        replaced): what `save` records. A guidance rule set on `model.guidance` that the config's
        does not build is warned about there (a rule object has no config of its own to record)."""
        s = self.sampler
        live = SamplerConfig(steps=int(s.steps), temperature=float(s.temperature), mask_schedule=str(s.mask_schedule))
        return self.config if live == self.config.sampler else dataclasses.replace(self.config, sampler=live)

    @classmethod
    def from_pretrained(cls, path_or_preset: str | os.PathLike[str], /, **kwargs: Any) -> "SpecMaskFoley":
        """`controlfoley.from_pretrained` (a checkpoint file or folder, or a preset that ships
        weights; `strict`, `map_location` and config overrides as there)."""
        return from_pretrained(path_or_preset, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """`nn.Module.load_state_dict`; weights set this way come from elsewhere, so what they
        trained is unknown: `trained_parts` becomes None (a checkpoint saved next records nothing
        and is taken as it is), and what loaded weights were trained as (`trained_as`) no longer
        applies. `from_pretrained` and the training loop set their own record."""
        out = super().load_state_dict(*args, **kwargs)
        self.trained_parts = None
        self.trained_as = {}
        return out

    # -- properties ------------------------------------------------------------------------------
    @property
    def has_control(self) -> bool:
        return self.controlnet is not None

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def n_samples(self) -> int:
        """Waveform samples of one window."""
        return self.config.n_frames * self.mel.hop_length

    @property
    def sample_rate(self) -> int:
        """Waveform sample rate in Hz (the mel front-end's: 22,050 for the paper's presets)."""
        return int(self.mel.sample_rate)

    def _control_parts(self) -> tuple[ControlEncoderModule, nn.Module, ControlNet]:
        """The control encoder, aligner and ControlNet of a model with video control: build_model
        makes the three together; a model missing one (set to None after building) is refused, named."""
        enc, aligner, net = self.control_encoder, self.aligner, self.controlnet
        if enc is None or aligner is None or net is None:
            missing = [n for n, m in zip(_CONTROL_PARTS, (enc, aligner, net), strict=True) if m is None]
            raise ConfigError(
                f"this model's video control is incomplete: it has no {' or '.join(missing)} (the control encoder, aligner "
                "and ControlNet go together: build_model makes all three, or none for a backbone alone)"
            )
        return enc, aligner, net

    def control_modules(self) -> list[nn.Module]:
        """The video-control parts (control encoder, aligner, ControlNet): what the ControlNet recipe
        trains; [] for a backbone alone."""
        return [m for m in (self.control_encoder, self.aligner, self.controlnet) if m is not None]

    def freeze_backbone(self) -> "SpecMaskFoley":
        """The paper's ControlNet recipe: backbone (and tokenizer, vocoder) frozen, control parts trainable.

        Warns when the ControlNet is untrained (its zero-initialised linears still zero) but its
        blocks are not the backbone's first blocks: backbone weights loaded by hand
        (`model.backbone.load_state_dict(...)`) after the model was built leave the branch a copy of
        the weights it was built with, and a backbone run's file holds its untrained ControlNet as it
        was built; the paper's ControlNet starts from the pretrained backbone (the CLI's `--init` and
        `controlfoley.checkpoint.load_parts(model, path, ["backbone"])` copy it again; `from_pretrained`
        loads a file's ControlNet as saved)."""
        net = self.controlnet
        one_rank = not torch.distributed.is_available() or not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        if net is not None and one_rank and net.untrained() and net.differs_from(self.backbone):
            warnings.warn(
                "the ControlNet is untrained but its blocks are not a copy of the backbone's first blocks (backbone weights loaded "
                "by hand after the model was built?): it would train from other weights than the paper's initialisation; call "
                "model.controlnet.copy_from(model.backbone) first (the CLI's --init and controlfoley.checkpoint.load_parts(model, PATH, "
                "['backbone']) copy it; from_pretrained keeps a file's own ControlNet)",
                stacklevel=user_stacklevel(),
            )
        self.requires_grad_(False)
        for m in self.control_modules():
            m.requires_grad_(True)
        return self

    def enable_activation_checkpointing(self, enabled: bool = True) -> "SpecMaskFoley":
        """Recompute each transformer block's activations (backbone and ControlNet) in the backward
        pass instead of keeping them (torchtune's `enable_activation_checkpointing`, diffusers'
        `enable_gradient_checkpointing`): a training step keeps one block input per block where it
        kept every intermediate (attention, the 4x-wide MLP), and runs the blocks' forward twice.
        The same gradients; for a batch that does not fit otherwise, fewer `grad_accum` steps.

        It applies where a block is in training mode with grad enabled, so sampling (`generate`:
        eval and inference mode) and validation are unchanged. The module tree and `state_dict` keys
        stay as they are (`backbones.base.RecomputedForward`). A setting of this object, not of its
        weights: `save` does not record it (a loaded model has it off), deepcopy keeps it. A part
        without a `blocks` ModuleList or Sequential (optional in the Backbone contract for a model
        without video) is refused, named, before any block is changed."""
        parts: list[tuple[str, str, nn.Module]] = [("backbone", self.config.backbone.name, self.backbone)]
        if self.controlnet is not None:
            parts.append(("controlnet", "controlnet", self.controlnet))
        found = []
        for part, name, module in parts:
            blocks = getattr(module, "blocks", None)
            if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks) > 0:
                found.append(blocks)
            elif enabled:  # (switching off: a part without blocks has nothing on)
                got = "has no `blocks`" if blocks is None else f"has `blocks` = {type(blocks).__name__}"
                got += " (empty)" if isinstance(blocks, nn.Module) else ""
                raise ConfigError(
                    f"activation checkpointing recomputes each block of `blocks`, but {part} {name!r} ({type(module).__name__}) {got}; "
                    "give it `blocks`, an nn.ModuleList of the blocks its forward_blocks calls in turn (controlfoley.backbones.base.Backbone), "
                    "or train without activation checkpointing"
                )
        for blocks in found:
            recompute_blocks(blocks, enabled)
        return self

    @property
    def activation_checkpointing(self) -> bool:
        """Whether every transformer block recomputes its activations in the backward pass
        (`enable_activation_checkpointing`)."""
        parts: list[nn.Module] = [self.backbone] + ([self.controlnet] if self.controlnet is not None else [])
        return all(isinstance(blocks := getattr(m, "blocks", None), nn.Module) and recomputes(blocks) for m in parts)

    # -- the network -----------------------------------------------------------------------------
    def encode_control(self, features: Mapping[str, Tensor]) -> Float[Tensor, "b l d"]:
        """Video features -> control encoder -> aligner: [b, F*T, D] in the backbone's token order."""
        if not self.has_control:
            raise ConfigError("this model has no ControlNet (a backbone-only preset); it takes no video features")
        if not isinstance(features, Mapping):
            raise ShapeError(f"features must be a dict of name -> [batch, frames, dim] tensors, got {type(features).__name__}")
        feats = {k: self._as_input(v, f"video feature {k!r}") for k, v in features.items()}
        enc, aligner, _ = self._control_parts()
        self._check_features(feats)
        try:
            encoded = enc(feats)
        except RuntimeError as e:  # the built-ins check their inputs; a user encoder may not: name the part and what it got
            if isinstance(e, torch.OutOfMemoryError) or not any(w in str(e) for w in ("shape", "size")):
                raise
            shapes = {k: list(v.shape) for k, v in feats.items()}
            enc_name = self.config.control_encoder.name if self.config.control_encoder is not None else "?"
            raise ShapeError(
                f"control encoder {enc_name!r} failed on video features {shapes}: {str(e).splitlines()[0]}; do the feature widths "
                "match what it was built for? (declare them as its `feature_dims` to have them checked up front)"
            ) from e
        width = int(enc.out_dim)
        if not isinstance(encoded, Tensor) or encoded.ndim != 3 or encoded.shape[-1] != width:
            got = list(encoded.shape) if isinstance(encoded, Tensor) else type(encoded).__name__
            enc_name = self.config.control_encoder.name if self.config.control_encoder is not None else "?"
            raise ShapeError(
                f"control encoder {enc_name!r} returned {got}, but it declares out_dim={width}: it must return [batch, frames, {width}] "
                "(the aligner was built for that width); make out_dim the width its forward gives"
            )
        out = aligner(encoded)
        want = (self.n_tokens, self.backbone.dim)
        if not isinstance(out, Tensor) or out.ndim != 3 or tuple(out.shape[1:]) != want:
            got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            aligner_name = self.config.aligner.name if self.config.aligner is not None else "?"
            raise ShapeError(
                f"aligner {aligner_name!r} returned {got}; an aligner must return [batch, F*T, D] = "
                f"[batch, {want[0]}, {want[1]}] for this model (token grid {self.grid[0]}x{self.grid[1]}, backbone width {want[1]})"
            )
        return out

    def _check_features(self, feats: Mapping[str, Tensor]) -> None:
        """Every key the control encoder reads is given, [b, t, d] with the width it declares in
        `feature_dims`: checked here for any encoder, so that a user encoder gets what the built-ins
        check themselves (it got a bare KeyError for a missing key, and features of another width
        reached its forward, where a mean or a pooling may take them without an error)."""
        enc = self._control_parts()[0]
        enc_name = self.config.control_encoder.name if self.config.control_encoder is not None else "?"
        need = tuple(enc.required_features)
        missing = [k for k in need if k not in feats]
        if missing:
            what = f"video feature {missing[0]!r} is" if len(missing) == 1 else f"video features {missing} are"
            raise ShapeError(
                f"{what} missing; got keys {sorted(feats)}, and control encoder {enc_name!r} reads {list(need)}. "
                "Extract it first (controlfoley extract), or pass it under that key"
            )
        for key, dim in feature_dims(enc).items():
            x = feats[key]
            if x.ndim != 3 or x.shape[-1] != dim:
                raise ShapeError(
                    f"video feature {key!r} must be [batch, frames, {dim}] for control encoder {enc_name!r} (its feature_dims), "
                    f"got {list(x.shape)}" + (f"; for one clip pass features[{key!r}][None]" if x.ndim == 2 and x.shape[-1] == dim else "")
                )

    def _as_input(self, x: Any, what: str) -> Tensor:
        """A float input on the model's device and in its parameter dtype (fp16 dataset features,
        fp64 numpy arrays); integer or bool tensors are refused."""
        if not isinstance(x, Tensor):
            raise ShapeError(f"{what} must be a torch.Tensor, got {type(x).__name__} (torch.as_tensor(...) converts arrays)")
        if not x.is_floating_point():
            raise ShapeError(f"{what} must be a float tensor, got {x.dtype}")
        dtype = next(self.backbone.parameters()).dtype
        return x.to(device=self.device, dtype=dtype)

    def _as_text(self, text: Tensor | None, what: str = "text") -> Tensor | None:
        if text is None:
            return None
        text = self._as_input(text, what)
        c = self.backbone.cond_dim
        if text.ndim != 2 or text.shape[1] != c:
            hint = f" (one embedding: {what}[None])" if text.ndim == 1 else ""
            raise ShapeError(f"{what} must be [batch, {c}] CLAP-like embeddings, got {list(text.shape)}{hint}")
        if not bool(torch.isfinite(text).all()):  # NaN conditions turn every logit NaN: all-zero tokens, silently
            rows = torch.nonzero(~torch.isfinite(text).all(-1)).flatten().tolist()
            raise ShapeError(f"{what} holds NaN or inf values (rows {rows}); an embedding of a zero vector normalised? check the text encoder's output")
        return text

    def forward(
        self,
        codes: Int[Tensor, "b l"],
        mask: Bool[Tensor, "b l"],
        *,
        cond: Float[Tensor, "b c"] | None = None,
        cond_on: Bool[Tensor, " b"] | None = None,
        control: Float[Tensor, "b l d"] | None = None,
        control_on: Bool[Tensor, " b"] | None = None,
    ) -> Float[Tensor, "b l v"]:
        """Logits. `control` is the aligned video feature (see `encode_control`); the ControlNet runs
        on the rows where `control_on` is True (all rows when None)."""
        x = self.backbone.embed(codes, mask, cond, cond_on)
        residuals = None
        if control is not None:
            if not self.has_control:
                raise ConfigError("video control given to a model without ControlNet")
            residuals = self._control_residuals(x, control, control_on)
        logits = self.backbone.logits(self.backbone.forward_blocks(x, residuals))
        check_logits(self.backbone, self.config.backbone.name, logits, codes.shape[0], codes.shape[1], indexed=False)
        return logits

    def _control_residuals(self, x: Tensor, control: Tensor, control_on: Tensor | None) -> list[Tensor | None]:
        net = self.controlnet
        assert net is not None  # forward, the only caller, checked has_control
        if control_on is None or bool(control_on.all()):
            return net(x, control)
        rows = control_on.nonzero().squeeze(1)
        part = net(x[rows], control[rows])
        full: list[Tensor | None] = []
        for r in part:  # scatter the control rows back; other rows get no residual (exactly zero)
            full.append(None if r is None else x.new_zeros(x.shape).index_copy(0, rows, r.to(x.dtype)))
        return full

    # -- training objective ----------------------------------------------------------------------
    def loss(
        self,
        codes: Integer[Tensor, "b f t"],
        *,
        features: Mapping[str, Tensor] | None = None,
        cond: Float[Tensor, "b c"] | None = None,
        uncond_prob: float = 0.9,
        generator: torch.Generator | None = None,
        mask_schedule: str | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Masked-token cross-entropy on masked positions; returns (loss, stats).

        `codes` [b, F, T] int token maps (`encode_audio` / a dataset's "tokens"); `features` the
        video features as for `generate`; `cond` [b, c] CLAP-like embeddings, each row kept with
        probability 1 - `uncond_prob` (the rest train the unconditional mask); `generator` a
        torch.Generator for the masks (drawn on its device, then moved to the model's); `mask_schedule` the name of the schedule the masked fraction is
        drawn from (`masked_token_mask`), by default the sampler's (`model.sampler.mask_schedule`), as
        MaskGIT trains with the schedule it samples with. A model with a ControlNet and no `features`
        trains without video (the backbone's loss), with a warning."""
        if isinstance(codes, Mapping):
            raise ShapeError(
                "loss takes the token map, not a batch dict: loss(batch['tokens'], features={'sync': ..., 'clip': ...}, cond=batch['clap'])"
            )
        if not isinstance(codes, Tensor):
            raise ShapeError(f"codes must be a torch.Tensor of int token ids [b, F, T], got {type(codes).__name__} (torch.as_tensor(...) converts arrays)")
        if codes.is_floating_point() or codes.dtype == torch.bool:
            raise ShapeError(f"codes must be integer token ids, got {codes.dtype}; tokens come from model.encode_audio / a dataset's 'tokens'")
        if isinstance(uncond_prob, bool) or not isinstance(uncond_prob, numbers.Real) or not 0.0 <= uncond_prob <= 1.0:
            raise ConfigError(f"uncond_prob is the probability of dropping the text condition, in [0, 1]; got {uncond_prob!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ConfigError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        b = codes.shape[0]
        if b == 0:
            raise ShapeError("codes hold an empty batch (0 token maps)")
        flat = self._flat_codes(codes)
        cond = self._as_text(cond, "cond")
        control = self.encode_control(features) if (self.has_control and features is not None) else None
        if features is None and self.has_control:
            log.warning("loss: no features given, so the ControlNet gets no video and this is the backbone's loss; pass features=...")
        _same_batch({"codes": codes, "features": control, "cond": cond})
        schedule = self.sampler.mask_schedule if mask_schedule is None else mask_schedule
        # drawn where the generator lives (a CPU generator with a CUDA model: the same masks as on the CPU)
        draw_on = flat.device if generator is None else generator.device
        mask = masked_token_mask(b, self.n_tokens, generator, draw_on, schedule).to(flat.device)
        cond_on = None
        if cond is not None:
            cond_on = (torch.rand(b, generator=generator, device=draw_on) >= uncond_prob).to(flat.device)
        ce, correct = self.masked_cross_entropy(flat, mask, cond=cond, cond_on=cond_on, control=control)
        n = mask.sum()
        loss = ce / n
        return loss, {"loss": loss.item(), "acc_masked": (correct / n).item(), "mask_frac": mask.float().mean().item()}

    def masked_cross_entropy(
        self,
        flat: Int[Tensor, "b l"],
        mask: Bool[Tensor, "b l"],
        *,
        cond: Float[Tensor, "b c"] | None = None,
        cond_on: Bool[Tensor, " b"] | None = None,
        control: Float[Tensor, "b l d"] | None = None,
    ) -> tuple[Float[Tensor, ""], Float[Tensor, ""]]:
        """Cross-entropy summed over the masked positions, and how many argmax predictions are right.
        Sums (not means) let a trainer normalise by the masked count of the whole global batch. A row
        whose `cond` is all zeros is a clip stored without a prompt (an untagged line of a tagged
        list): it takes the unconditional mask whatever `cond_on` says."""
        if cond is not None:
            prompted = cond.abs().amax(-1) > 0
            cond_on = prompted if cond_on is None else cond_on & prompted
        logits = self(flat, mask, cond=cond, cond_on=cond_on, control=control)
        picked, target = logits[mask].float(), flat[mask]
        ce = F.cross_entropy(picked, target, reduction="sum")
        with torch.no_grad():
            correct = (picked.argmax(-1) == target).sum().float()
        return ce, correct

    def _flat_codes(self, codes: Tensor) -> Tensor:
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid:
            raise ShapeError(f"codes must be [batch, {self.grid[0]}, {self.grid[1]}] for this model, got {list(codes.shape)}")
        v = self.backbone.vocab_size
        codes = _long_codes(codes, "codes")  # before the range check: 256 overflows a uint8 comparison
        if codes.numel() and (codes.min() < 0 or codes.max() >= v):
            raise ShapeError(f"token ids must be in [0, {v}), got range [{int(codes.min())}, {int(codes.max())}]")
        return codes.reshape(codes.shape[0], -1)

    # -- sampling -------------------------------------------------------------------------------
    @_in_eval_mode
    @torch.inference_mode()
    def generate(
        self,
        features: Mapping[str, Tensor] | None = None,
        text: Float[Tensor, "b c"] | None = None,
        *,
        batch_size: int | None = None,
        negative_text: Float[Tensor, "b c"] | None = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        temperature: float | None = None,
        guidance: GuidanceRule | str | None = None,
        known_codes: Integer[Tensor, "b f t"] | None = None,
        known_mask: Bool[Tensor, "b f t"] | None = None,
        generator: Generators = None,
        dtype: torch.dtype | None = None,
        compile: bool = False,
        static_shapes: bool | None = None,
        prune_rows: bool = True,
        onednn: bool | None = None,
        cuda_graph: bool = False,
        guidance_every: int = 1,
        callback: StepCallback | None = None,
        control_scale: float | None = None,
    ) -> Int[Tensor, "b f t"]:
        """Sample token maps with MaskGIT; returns an int64 token map [b, F, T] (`model.grid`), which
        `decode` turns into a normalised mel and `vocode` into a waveform.

        Conditions (give at least one; their batch sizes must agree):
        - `features`: video features, a dict of [b, t, d] tensors keyed by the control encoder's
          `required_features` (e.g. {"sync": ..., "clip": ...}); `text`: CLAP-like embeddings [b, c]
          (an all-zero row is no prompt, as a dataset stores an untagged clip and training reads it:
          that row's text rows take the unconditional mask, with a warning);
          `negative_text` [b, c] replaces the unconditional mask in the unconditional rows of a
          guided rule (cfg, multi): the term guidance steers away from. At a step whose CFG scale
          is 0 (the first of the paper's 0 -> 3 schedule) there is no guidance, and the tokens
          come from the unconditional model, not from the negative prompt.
        - `batch_size`: the number of maps for unconditional sampling (no features, no text, with
          `guidance=GUIDANCE.build("none", condition="uncond")`); with other inputs it must equal their batch.
        - `known_codes` / `known_mask` ([b, F, T] int ids and bool, given together): inpainting; the
          tokens where `known_mask` is True are kept exactly as given and the others sampled around
          them (the pipeline continues a long video this way).

        Sampling settings, each defaulting to the model's config (`model.config`):
        - `guidance`: a `GuidanceRule` replacing the model's (`config.guidance`, e.g. the paper's
          multi-CFG), e.g. `GUIDANCE.build("cfg_video", scale=2.0)`, or a GUIDANCE name ("cfg_video")
          built with its defaults; it says which of video/text it needs.
        - `cfg_scale`: the final CFG scale of the rule's schedule (default the rule's own `scale`, 3.0); 0
          samples the unconditional logits alone (no video, no text: eq. 1 at s = 0), and a negative scale steers away from the conditions (allowed: a research knob).
        - `steps`: MaskGIT steps (default `config.sampler.steps`, 12).
        - `temperature`: Gumbel choice temperature, annealed to 0 (default `config.sampler.temperature`, 9.0).
        - `control_scale`: multiplies every ControlNet residual (diffusers'
          `controlnet_conditioning_scale`; default 1.0, the paper's model): below 1 the video steers
          less, 0 leaves the backbone alone, above 1 more. A sampling knob, not saved with the model.
        - `callback(step, n_steps, codes, mask)`: called after each step with the token maps so far
          (`codes` [b, F, T]) and `mask` ([b, F, T], True where a token is still to be sampled), to
          watch or log decoding; not with `cuda_graph` (the loop is one captured graph).
        - `generator`: a torch.Generator on the model's device, for repeatable samples; or a list of
          them, one per row: row i then draws only from generator i and is the sample it gives at
          batch 1 (the same tokens up to the rounding of batched matrix products), as diffusers'
          lists of generators. One generator for a batch gives other samples than at batch 1.

        Speed options (see `controlfoley.fast`): `dtype` autocast (default bf16 on CUDA, fp32
        elsewhere; a model already in bf16, `model.to(torch.bfloat16)`, runs in bf16 without
        autocast by default, the fastest GPU setting measured); `compile` torch.compile of the
        step forward (CUDA graphs on CUDA);
        `static_shapes=False` vocab head on still-masked positions only (default: static on CUDA
        or when compiled); `prune_rows` (default on) only the uncond rows at steps whose CFG scale is 0, which
        gives the same logits (l_u + 0 * (...) = l_u; with `guidance_every` > 1 it also moves the
        steps that run in full, so the tokens differ a little: `controlfoley.fast`);
        `onednn` CPU linears through oneDNN with the MLP's GELU fused, bf16 weights cast (and
        packed) once per call (default: eager CPU, fp32 only on AVX-512 CPUs; see `fast.OneDNNLinear`);
        `cuda_graph` (CUDA) the whole sampling loop captured as one CUDA graph at the first call of
        a given shape and settings, then replayed: the eager tokens for the same generator (exactly in
        fp32; bf16 kernels may differ on a few), far less launch overhead at small batches (see
        `controlfoley.graphs`).

        `guidance_every` (default 1, the paper's sampler): an approximation that trades quality for
        arithmetic. With N > 1, all of the rule's condition sets run only at every N-th guided step;
        at the steps between, only its last, fully conditioned set runs (text+video for multi-CFG)
        and the other sets' logits are those of the last step that ran them, shifted by how much the
        conditioned set's logits changed since (`controlfoley.fast.GuidedStep`). For the paper's
        preset's multi-CFG, N = 3 runs 61% of the block arithmetic of the default sampler (75% for
        video-only CFG); a rule of one condition set is unchanged. What it does to quality is measured in
        benchmarks/RESULTS.md (`benchmarks/sampler_quality.py`)."""
        rule = self.resolve_guidance(guidance)
        _check_flags(compile=compile, prune_rows=prune_rows, cuda_graph=cuda_graph)
        self.sampler.settings(steps, temperature)  # bad settings fail now, before any work
        if callback is not None and not callable(callback):
            raise ConfigError(f"callback must be a function (step, n_steps, codes, mask), got {type(callback).__name__}")
        if callback is not None and cuda_graph:
            raise ConfigError("callback cannot run inside a captured CUDA graph: drop cuda_graph=True to watch the steps")
        control_scale = checked_control_scale(control_scale)
        if control_scale is not None and control_scale != 1.0 and not _takes_scale(self.controlnet):
            what = "has no ControlNet" if self.controlnet is None else f"has a ControlNet ({type(self.controlnet).__name__}) whose forward takes no scale="
            raise ConfigError(f"control_scale={control_scale}: this model {what}; leave control_scale out")
        check_generators(generator, None, self.device)  # the kind now; a list's length once the batch is known
        _check_inputs(cfg_scale, known_codes, known_mask)
        guidance_every = checked_guidance_every(guidance_every, rule)  # a plain int from here (numpy ints too)
        text, negative_text = self._as_text(text), self._as_text(negative_text, "negative_text")
        _warn_zero_rows(text, negative_text)
        control = self.encode_control(features) if (features is not None and self.has_control) else None
        b = _batch_of(control, text, known_codes, batch_size, negative_text)
        generator = check_generators(generator, b, self.device)
        for name, t in (("known_codes", known_codes), ("known_mask", known_mask)):
            if t is not None and tuple(t.shape) != (b, *self.grid):
                raise ShapeError(
                    f"{name} must be a token map [batch, F, T] = {[b, *self.grid]} (the tokenizer's grid, as decode/encode "
                    f"use it), got {list(t.shape)}" + ("; it looks transposed: pass .transpose(1, 2)" if tuple(t.shape) == (b, *self.grid[::-1]) else "")
                )
        self._check_rule_inputs(rule, features, control, text)
        scale = rule.scale if cfg_scale is None else float(cfg_scale)
        rows = _RowPlan(rule.conditions, b, text, negative_text, control, self.device)
        # said once per model and setting: a pipeline calls generate once per window of every video
        if negative_text is not None and len(rule.conditions) < 2:
            self._say_once(("negative_text", repr(rule)), "negative_text is ignored: guidance %s has no unconditional term to replace (use cfg or multi)", rule)
        if cfg_scale is not None and ignores_scale(rule):  # its logits as they are, at any scale
            self._say_once(
                ("cfg_scale", repr(rule), float(cfg_scale)),
                "cfg_scale=%s is ignored: guidance %s samples one condition set unguided, which no scale changes (use cfg or multi)", cfg_scale, rule,
            )
        # a negative prompt makes the scale-0 rows a need, not a saving: at s = 0 the rule's value is
        # its unconditional term, which must be the unconditional model's, not the negative prompt's
        zero = zero_scale_conditions(rule) if (prune_rows or negative_text is not None) else None
        zero_rows = None if zero is None else _RowPlan(zero, b, text, negative_text, control, self.device).kwargs
        # the anchor: the very rows the full steps run for the last set (negative prompt and all)
        anchor_rows = rows.last_set(b) if guidance_every > 1 else None
        step = GuidedStep(
            self, rule, scale, rows.kwargs, rows.n_sets, zero_scale_rows=zero_rows, anchor_rows=anchor_rows,
            guidance_every=guidance_every, static_shapes=static_shapes, compile=compile, captured=cuda_graph,
            control_scale=1.0 if control_scale is None else control_scale,
        )
        # on the model's device, both: the sampler indexes one with the other (CPU tokens and a CUDA mask would not mix)
        known = None if known_codes is None else known_codes.reshape(b, -1).to(self.device).long()
        known_at = None if known_mask is None else known_mask.reshape(b, -1).to(self.device)
        return self._sample(step, b, known, known_at, generator, steps, temperature, dtype, compile, onednn, cuda_graph, callback)

    def _sample(
        self, step: GuidedStep, b: int, known: Tensor | None, known_at: Tensor | None, generator: Generators, steps: int | None,
        temperature: float | None, dtype: torch.dtype | None, compile: bool, onednn: bool | None, cuda_graph: bool, callback: Any,
    ) -> Int[Tensor, "b f t"]:
        """`generate`'s sampling loop, once the inputs are checked and the rows planned."""
        weights = param_dtype(self.backbone, torch.float32)
        if cuda_graph:
            from controlfoley.graphs import sample_graphed

            flat = sample_graphed(
                self, step, batch=b, known_codes=known, known_mask=known_at, generator=generator, steps=steps,
                temperature=temperature, dtype=dtype, param_dtype=weights, compile=compile,
            )
            return flat.view(b, *self.grid)
        # one autocast context for all steps, so autocast's cache of cast weights is reused
        with precision(self.device, dtype, param_dtype=weights) as dt, onednn_linear(self.device, dt, onednn, compile):
            flat = self.sampler.sample(
                step,
                batch=b,
                n_tokens=self.n_tokens,
                vocab_size=self.backbone.vocab_size,
                device=self.device,
                known_codes=known,
                known_mask=known_at,
                generator=generator,
                steps=steps,
                temperature=temperature,
                callback=None if callback is None else (lambda k, n, c, m: callback(k, n, c.view(b, *self.grid), m.view(b, *self.grid))),
            )
        return flat.view(b, *self.grid)

    def resolve_guidance(self, guidance: Any = None) -> GuidanceRule:  # a validator: it takes anything
        """The rule `generate(guidance=...)` samples with: the model's own for None, a GUIDANCE name
        built with its defaults, or a GuidanceRule as given; anything else is a ConfigError."""
        if guidance is None:
            return self.guidance
        if isinstance(guidance, str):
            from controlfoley._registry import GUIDANCE

            guidance = GUIDANCE.build(guidance)  # an unknown name: RegistryError listing the rules
        if not isinstance(guidance, GuidanceRule):
            raise ConfigError(f"guidance must be a GuidanceRule or a GUIDANCE name, got {type(guidance).__name__}")
        check_rule(guidance, "guidance")
        return guidance

    def _say_once(self, key: tuple[Any, ...], msg: str, *args: Any) -> None:
        """log.warning(msg, *args) the first time this model meets `key`, then not again."""
        said: set[tuple[Any, ...]] = self.__dict__.setdefault("_said_once", set())
        if key not in said:
            said.add(key)
            log.warning(msg, *args)

    def _check_rule_inputs(self, rule: GuidanceRule, features: Any, control: Tensor | None, text: Tensor | None) -> None:
        """A condition the rule needs and was not given fails, naming the rule that fits what was
        given; an input the rule (or the model) does not use is said, not silently dropped."""
        uncond = "GUIDANCE.build('none', condition='uncond') (unconditional)"
        if rule.needs_video and not self.has_control:
            fits = "'cfg_text' (with text=...)" if text is None else "'cfg_text'"
            raise ConfigError(f"guidance {rule} needs video features, but this model has no video control (a backbone alone); use guidance {fits} or {uncond}")
        if rule.needs_video and control is None:
            fits = "'cfg_text' (text-only guidance)" if text is not None else uncond
            raise ConfigError(f"guidance {rule} needs video features; pass features=..., or use guidance {fits}")
        if rule.needs_text and text is None:
            fits = "'cfg_video' (video-only guidance)" if control is not None else uncond
            raise ConfigError(f"guidance {rule} needs a text (CLAP) embedding; pass text=..., or use guidance {fits}")
        if features is not None and not self.has_control:
            log.warning("features are ignored: this model has no video control (a backbone alone); drop them, or sample a model with a ControlNet")
        elif features is not None and not rule.needs_video:
            log.warning("features are ignored: guidance %s has no video condition (use 'multi' or 'cfg_video' to follow the video)", rule)
        if text is not None and not rule.needs_text:
            log.warning("text is ignored: guidance %s has no text condition (use 'multi' or 'cfg_text_video' to follow it)", rule)

    @torch.no_grad()
    def decode(self, codes: Integer[Tensor, "b f t"]) -> Float[Tensor, "b m n"]:
        """Token map -> normalised mel."""
        _require_tensor(codes, "codes", "[batch, F, T] int token ids")
        mel = self.tokenizer.decode(_long_codes(codes, "codes"))
        n_mels = int(self.mel.n_mels)
        if not isinstance(mel, Tensor) or mel.ndim != 3 or mel.shape[0] != codes.shape[0] or mel.shape[1] != n_mels or not mel.is_floating_point():
            # else blamed on the vocoder ("mel must be [batch, 80, frames] for this model's vocoder")
            got = f"{list(mel.shape)} {mel.dtype}" if isinstance(mel, Tensor) else type(mel).__name__
            raise ShapeError(
                f"tokenizer {type(self.tokenizer).__name__}.decode turned codes {list(codes.shape)} into {got}; a tokenizer must "
                f"decode to a float normalised mel [batch, n_mels, frames] = [{codes.shape[0]}, {n_mels}, frames] (the mel front end's n_mels)"
            )
        return mel

    @torch.no_grad()
    def vocode(self, mel: Float[Tensor, "b m n"]) -> Float[Tensor, "b s"]:
        """Normalised mel -> fp32 waveform, whatever the model's dtype (a bf16 model's mel is cast
        to the vocoder's own parameter dtype, fp32 for a vocoder without weights)."""
        n_mels = int(self.mel.n_mels)
        _require_tensor(mel, "mel", f"[batch, {n_mels}, frames] normalised mel")
        if mel.ndim != 3 or mel.shape[1] != n_mels:
            raise ShapeError(f"mel must be [batch, {n_mels}, frames] for this model's vocoder, got {list(mel.shape)}")
        if not mel.is_floating_point():
            raise ShapeError(f"mel must be a float tensor (a normalised mel, model.decode's output), got {mel.dtype}")
        if mel.shape[-1] < 1:
            raise ShapeError("mel has 0 frames: nothing to vocode")
        if not bool(torch.isfinite(mel).all()):
            raise ShapeError("mel holds NaN or inf values: the vocoder would return silence; check what made it")
        return run_vocoder(self.vocoder, mel, hop_length=int(self.mel.hop_length))

    @torch.no_grad()
    def encode_audio(self, wav: Float[Tensor, "b s"], sample_rate: int | None = None) -> Int[Tensor, "b f t"]:
        """Waveform [b, s] in [-1, 1] at `model.sample_rate` -> mel -> tokens, cropped/padded to the
        model's window. `sample_rate`: the waveform's rate when it is another (resampled with soxr,
        as `controlfoley.audio.io.load_audio` does); leaving it out means the model's rate."""
        channels_last = isinstance(wav, torch.Tensor) and wav.ndim == 2 and wav.shape[1] <= 2 < wav.shape[0]
        if not isinstance(wav, torch.Tensor) or wav.ndim != 2 or not wav.is_floating_point() or channels_last:
            got = f"a {wav.ndim}-D {wav.dtype} tensor of shape {list(wav.shape)}" if isinstance(wav, torch.Tensor) else type(wav).__name__
            hint = "for one clip pass wav[None]"
            if isinstance(wav, torch.Tensor) and wav.ndim == 2 and wav.dtype in (torch.int16, torch.int32, torch.int64, torch.int8):  # the shape is right
                hint = f"integer samples are PCM: pass floats in [-1, 1], e.g. wav.float() / {2 ** (torch.iinfo(wav.dtype).bits - 1)}"
            elif isinstance(wav, torch.Tensor) and wav.ndim == 2 and wav.dtype == torch.uint8:
                hint = "8-bit PCM: pass floats in [-1, 1], (wav.float() - 128) / 128"
            if channels_last:
                hint = "this looks like [samples, channels] (soundfile's layout): pass wav.T for channels as the batch, or wav.mean(-1)[None] for mono"
            raise ShapeError(f"encode_audio takes float waveforms [batch, samples] at {self.sample_rate} Hz, got {got}; {hint}")
        if sample_rate is not None:
            from controlfoley.audio.io import _checked_rate

            sample_rate = _checked_rate(sample_rate, "encode_audio")  # the library's one rule: a positive whole number of Hz
            if sample_rate != self.sample_rate:
                import librosa

                y = librosa.resample(wav.detach().cpu().float().numpy(), orig_sr=sample_rate, target_sr=self.sample_rate, res_type="soxr_hq", axis=-1)
                wav = torch.from_numpy(y).to(wav.device, wav.dtype)
        peak = float(wav.abs().max()) if wav.numel() else 0.0
        if peak > 2.0:  # a little over 1 is real audio (inter-sample peaks); 32767 is int16 scale
            log.warning(
                "encode_audio: the waveform peaks at %.4g; it should lie in [-1, 1] (float audio). Integer PCM scale? divide by 32768%s",
                peak, "" if sample_rate is not None else f"; and give sample_rate= when it is not {self.sample_rate} Hz",
            )
        mel = self.mel(wav)
        n = self.config.n_frames
        mel = mel[..., :n] if mel.shape[-1] >= n else F.pad(mel, (0, n - mel.shape[-1]), value=-1.0)
        return self.encode_mel(mel)

    @torch.no_grad()
    def encode_mel(self, mel: Float[Tensor, "b m n"]) -> Int[Tensor, "b f t"]:
        """Mel windows [b, n_mels, n_frames] -> tokens [b, F, T] through the tokenizer, checked: a
        tokenizer whose codes are not [b, F, T] of this model's grid, integers in its codebook, fails
        here naming it (not later as data "extracted for another preset")."""
        n_mels, n = int(self.mel.n_mels), self.config.n_frames
        _require_tensor(mel, "mel", f"[batch, {n_mels}, {n}] normalised mel")
        if mel.ndim != 3 or mel.shape[1] != n_mels or mel.shape[2] != n or not mel.is_floating_point():
            hint = (
                f"; crop or pad its frames to {n} (pad with -1.0, the normalised floor), as encode_audio does for a waveform"
                if mel.ndim == 3 and mel.shape[1] == n_mels and mel.is_floating_point() else ""
            )
            raise ShapeError(
                f"encode_mel takes float mel windows [batch, {n_mels}, {n}] (one model window of the normalised mel, "
                f"model.mel's output), got a {mel.dtype} tensor of shape {list(mel.shape)}{hint}"
            )
        codes = self.tokenizer.encode(mel.to(param_dtype(self.tokenizer, mel.dtype)))  # a bf16 / fp16 model's own dtype
        want = (mel.shape[0], *self.grid)
        name = self.config.tokenizer.name
        if not isinstance(codes, Tensor) or tuple(codes.shape) != want or codes.is_floating_point() or codes.dtype == torch.bool:
            got = f"{list(codes.shape)} {codes.dtype}" if isinstance(codes, Tensor) else type(codes).__name__
            raise ShapeError(
                f"tokenizer {name!r} encoded mel {list(mel.shape)} to {got}; a tokenizer's encode must return integer codes "
                f"[batch, F, T] = {list(want)} for this model's token grid {self.grid} (a 1-D tokenizer keeps F = 1: codes[:, None])"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.tokenizer.codebook_size):
            raise ShapeError(
                f"tokenizer {name!r} gave codes in [{int(codes.min())}, {int(codes.max())}], outside its codebook of "
                f"{self.tokenizer.codebook_size}; codes must be in [0, codebook_size)"
            )
        return codes

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, extra_metadata: Mapping[str, str] | None = None) -> Path:
        """Write the model to `path` (a .safetensors file; any other path is a folder that gets
        model.safetensors), atomically: an interrupted save leaves the old file intact. The file holds
        every parameter and persistent buffer, and in its metadata the config (`from_pretrained`
        rebuilds the model from it), the parts recorded as trained (`trained_parts`) and where user
        parts came from. `extra_metadata`: more str -> str pairs to store (other values, and the library's own keys
        such as controlfoley_config, are ConfigErrors). Returns the file's path.
        A model with fp8 block linears (`quantize_fp8`) cannot be saved: save before quantizing."""
        from controlfoley.checkpoint import save_model

        return save_model(self, path, extra_metadata=extra_metadata)

    def save_pretrained(self, folder: str | os.PathLike[str], *, extra_metadata: Mapping[str, str] | None = None) -> Path:
        """`save` under the name transformers and diffusers use: FOLDER/model.safetensors, which
        `from_pretrained(FOLDER)` loads. Returns the file's path."""
        if str(folder).endswith(".safetensors"):
            raise ConfigError(f"save_pretrained takes a folder (it writes FOLDER/model.safetensors), got {folder}; use save() for a file")
        return self.save(folder, extra_metadata=extra_metadata)

    def parameter_table(self) -> list[dict[str, Any]]:
        """One row per part (tokenizer, backbone, the video parts, vocoder): {"part", "params",
        "trainable", "frozen"}, counted from `requires_grad` as the model stands now (after
        `freeze_backbone()`: the ControlNet recipe's split). `controlfoley info` prints these rows."""
        rows = []
        for name in ("tokenizer", "backbone", *_CONTROL_PARTS, "vocoder"):
            m = getattr(self, name)
            if m is None:
                continue
            n = sum(p.numel() for p in m.parameters())
            t = sum(p.numel() for p in m.parameters() if p.requires_grad)
            rows.append({"part": name, "params": n, "trainable": t, "frozen": n - t})
        return rows


class _RowPlan:
    """Stacked rows for one batched forward over all condition sets of a guidance rule."""

    def __init__(
        self,
        conditions: tuple[Condition, ...],
        b: int,
        text: Tensor | None,
        negative: Tensor | None,
        control: Tensor | None,
        device: torch.device,
    ) -> None:
        self.n_sets = len(conditions)
        cond_rows, cond_on, ctrl_on = [], [], []
        off = torch.zeros(b, dtype=torch.bool, device=device)
        for c in conditions:
            # the subtracted term of a guided rule only: alone (no guidance, or a scale-0 step) the
            # unconditional rows stay unconditional rather than sampling toward the negative prompt
            use_neg = c == UNCOND and negative is not None and len(conditions) > 1
            src = text if c.text else (negative if use_neg else None)
            cond_rows.append(src if src is not None else _zeros_like_cond(text, negative, b, device))
            # an all-zero row is "no prompt", as in training (SpecMaskFoley.loss): the unconditional mask
            cond_on.append(off if src is None else (src.abs().amax(-1) > 0).to(device))
            ctrl_on.append(torch.full((b,), c.video, dtype=torch.bool, device=device))
        any_cond = text is not None or negative is not None
        on = torch.cat(ctrl_on)
        self.kwargs: dict[str, Any] = {
            # with a text or a negative every row is a Tensor (_zeros_like_cond gives one from either)
            "cond": torch.cat(cast("list[Tensor]", cond_rows)).to(device) if any_cond else None,
            "cond_on": torch.cat(cond_on) if any_cond else None,
            "control": None if (control is None or not bool(on.any())) else control.repeat(self.n_sets, 1, 1),
            "control_on": on,
        }

    def last_set(self, b: int) -> dict[str, Any]:
        """The rows of the last condition set alone (the last `b` of each stacked input), as kwargs."""
        kw = self.kwargs
        on = kw["control_on"][-b:]
        return {
            "cond": None if kw["cond"] is None else kw["cond"][-b:],
            "cond_on": None if kw["cond_on"] is None else kw["cond_on"][-b:],
            "control": None if kw["control"] is None or not bool(on.any()) else kw["control"][-b:],
            "control_on": on,
        }


def _warn_zero_rows(text: Tensor | None, negative: Tensor | None) -> None:
    """Say so where a text or negative row is all zeros: the model reads it as no prompt (a dataset
    stores an untagged clip that way and training gives it the unconditional mask), so a text rule
    samples that row with its text rows unconditional, not as the rule without text would."""
    for what, t in (("text", text), ("negative_text", negative)):
        if t is None:
            continue
        zero = torch.nonzero(t.abs().amax(-1) == 0).flatten().tolist()
        if zero:
            fix = (
                "for the paper's no-prompt sampling give those videos text=None and guidance=model.resolve_guidance().without_text() "
                "(FoleyPipeline does this)" if what == "text" else "those rows have no negative prompt"
            )
            warnings.warn(
                f"{what} rows {zero[:8]}{' ...' if len(zero) > 8 else ''} are all zeros, which the model reads as no prompt "
                f"(as in training: a clip stored without one); they take the unconditional mask; {fix}",
                stacklevel=user_stacklevel(),
            )


def _zeros_like_cond(text: Tensor | None, negative: Tensor | None, b: int, device: torch.device) -> Tensor | None:
    ref = text if text is not None else negative
    return None if ref is None else ref.new_zeros(b, ref.shape[-1])


def run_vocoder(vocoder: nn.Module, mel: Float[Tensor, "b m n"], *, hop_length: int | None = None) -> Float[Tensor, "b s"]:
    """`vocoder(mel)` as fp32, the mel cast to the vocoder's parameter dtype (fp32 for one without
    weights, such as Griffin-Lim): a bf16 model's mel goes through an fp32 vocoder and back. A
    vocoder with weights gets the mel on its own device (one kept on the CPU beside a CUDA model,
    say); the waveform comes back on the mel's device. `hop_length`: the mel front end's; a
    waveform more than one hop away from frames x hop samples is a ShapeError (a vocoder for another
    hop at the same rate: its audio would be timed, cut and written as if stretched)."""
    p = next((p for p in vocoder.parameters() if p.is_floating_point()), None)
    on, dtype = (mel.device, torch.float32) if p is None else (p.device, p.dtype)
    wav = vocoder(mel.to(on, dtype))
    if not isinstance(wav, Tensor) or wav.ndim != 2 or wav.shape[0] != mel.shape[0] or not wav.is_floating_point():
        # a user vocoder returning [b, 1, s] (a GAN's channel axis) or the mel itself went on to be
        # written as a wrong WAV or failed far away; the Vocoder contract is [b, s]
        got = f"{list(wav.shape)} {wav.dtype}" if isinstance(wav, Tensor) else type(wav).__name__
        hint = "; drop the channel axis (wav[:, 0] or wav.squeeze(1)) in its forward" if isinstance(wav, Tensor) and wav.ndim == 3 and wav.shape[1] == 1 else ""
        raise ShapeError(
            f"vocoder {type(vocoder).__name__} turned mel {list(mel.shape)} into {got}; a vocoder must return float waveforms "
            f"[batch, samples] = [{mel.shape[0]}, samples] (the Vocoder protocol, controlfoley.audio.vocoders){hint}"
        )
    if hop_length is not None and abs(wav.shape[1] - mel.shape[-1] * hop_length) > hop_length:
        raise ShapeError(
            f"vocoder {type(vocoder).__name__} turned {mel.shape[-1]} mel frames into {wav.shape[1]} samples, about "
            f"{wav.shape[1] / mel.shape[-1]:.4g} per frame, but the mel front end's hop is {hop_length} samples per frame "
            f"({mel.shape[-1] * hop_length} samples): use a vocoder for this mel front end (its hop and sample rate)"
        )
    if not bool(torch.isfinite(wav).all()):  # written later as 'save_audio expects finite samples', naming neither
        bad = "NaN" if bool(torch.isnan(wav).any()) else "infinite"
        source = "" if bool(torch.isfinite(mel).all()) else " from a mel that already held NaN or infinite values (the tokenizer's decode)"
        raise ShapeError(
            f"vocoder {type(vocoder).__name__} returned {bad} samples{source}; a vocoder must return finite waveforms "
            "(check its weights and its input range: controlfoley mels are normalised to [-1, 1])"
        )
    return wav.float().to(mel.device)


def param_dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype of `module`'s first floating-point parameter; `default` for a module without one."""
    p = next((p for p in module.parameters() if p.is_floating_point()), None)
    return default if p is None else p.dtype


def checked_guidance_every(value: Any, rule: GuidanceRule | None = None) -> int:  # a validator: it takes anything
    """`generate`'s guidance_every as an int >= 1, or a ConfigError naming it. With `rule`: 1 for a
    rule of one condition set, which runs at every step anyway (with a warning when more was asked)."""
    value = checked_every(value)
    if rule is not None and value > 1 and len(rule.conditions) < 2:
        log.warning("guidance_every=%d does nothing: guidance %s has one condition set, which runs at every step", value, rule)
        return 1
    return value


def checked_control_scale(value: Any) -> float | None:  # a validator: it takes anything
    """`generate`'s control_scale as a float (None stays None), or a ConfigError naming it."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)):
        raise ConfigError(f"control_scale must be a finite number (1.0: the ControlNet as trained), got {value!r}")
    return None if value is None else float(value)


def _check_inputs(cfg_scale: Any, known_codes: Any, known_mask: Any) -> None:
    """A non-finite CFG scale or bad inpainting inputs fail here, named (the sampler checks
    steps and temperature: MaskGITSampler.settings; `checked_guidance_every` guidance_every)."""
    if cfg_scale is not None and (isinstance(cfg_scale, bool) or not isinstance(cfg_scale, numbers.Real) or not math.isfinite(cfg_scale)):
        raise ConfigError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
    for name, t in (("known_codes", known_codes), ("known_mask", known_mask)):
        if t is not None:
            _require_tensor(t, name, "[batch, F, T]")
        if t is not None and t.ndim != 3:
            raise ShapeError(f"{name} must be a token map [batch, F, T], got {t.ndim}-D {list(t.shape)}" + (f"; for one map pass {name}[None]" if t.ndim == 2 else ""))
    if known_mask is not None and known_mask.dtype != torch.bool:
        raise ShapeError(f"known_mask must be a bool tensor (True where a token is kept), got {known_mask.dtype}; pass known_mask.bool()")
    if known_codes is not None and (known_codes.is_floating_point() or known_codes.dtype == torch.bool):
        raise ShapeError(f"known_codes must be integer token ids, got {known_codes.dtype}; token maps come from generate / encode_audio")
    if (known_codes is None) != (known_mask is None):
        given, missing = ("known_mask", "known_codes") if known_codes is None else ("known_codes", "known_mask")
        raise ShapeError(f"{given} given without {missing}: inpainting takes both, the tokens (known_codes) and where they are kept (known_mask)")


def _takes_scale(controlnet: nn.Module | None) -> bool:
    """Whether `controlnet`'s forward takes `scale=` (the library's does; a replacement may not)."""
    if controlnet is None:
        return False
    try:
        return "scale" in inspect.signature(controlnet.forward).parameters
    except (TypeError, ValueError):
        return False


def _require_tensor(x: Any, what: str, shape: str) -> None:
    if not isinstance(x, Tensor):
        raise ShapeError(f"{what} must be a torch.Tensor {shape}, got {type(x).__name__} (torch.as_tensor(...) converts arrays)")


def _check_flags(**flags: Any) -> None:
    """On/off arguments are bools (numpy's too): a string such as "no" is truthy, and compile="no" compiled."""
    import numpy as np

    for name, v in flags.items():
        if not isinstance(v, (bool, np.bool_)):
            raise ConfigError(f"{name} must be True or False, got {type(v).__name__} {v!r}")


def _long_codes(codes: Tensor, what: str) -> Tensor:
    """Integer token ids as int64: a uint8 / int8 map (a compact dataset's) compared with a
    codebook size of 256 or more overflows in its own dtype, and embeddings take int64."""
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ShapeError(f"{what} must be integer token ids, got {codes.dtype}; token maps come from generate / encode_audio")
    return codes.long()


def _same_batch(named: Mapping[str, Tensor | int | None]) -> set[int]:
    """The batch sizes of the named inputs (tensors, or an int batch_size), which must agree: a
    ShapeError names each input's."""
    sizes = {n: (v if isinstance(v, int) else v.shape[0]) for n, v in named.items() if v is not None}
    if len(set(sizes.values())) > 1:
        given = ", ".join(f"{n} {v}" for n, v in sizes.items())
        raise ShapeError(f"batch sizes disagree ({given}): every input needs the same batch")
    return set(sizes.values())


def _batch_of(control: Tensor | None, text: Tensor | None, known: Tensor | None, batch_size: int | None, negative: Tensor | None = None) -> int:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1):
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    sizes = _same_batch({
        "features": control, "text": text, "known codes": known, "negative text": negative,
        "batch_size": None if batch_size is None else int(batch_size),
    })  # fmt: skip
    if not sizes:
        raise ShapeError("nothing to condition on: pass features, text, known codes or batch_size")
    return sizes.pop()


# -- loading -------------------------------------------------------------------------------------
def from_pretrained(
    path_or_preset: str | os.PathLike[str], /, *, strict: bool = True, map_location: str | torch.device = "cpu", **overrides: Any
) -> SpecMaskFoley:
    """Load a model saved with `save` (a .safetensors file or a folder holding model.safetensors),
    or a preset that ships weights (`controlfoley.presets.PRETRAINED`), onto `map_location` (any
    torch device: "cpu", "cpu:0", "cuda:1", torch.device(...)), in eval mode (`.train()` to fine-tune)."""
    from controlfoley.checkpoint import load_model

    _check_flags(strict=strict)
    return load_model(path_or_preset, strict=strict, map_location=device_name(map_location), **overrides)


def device_name(device: str | torch.device, *, arg: str = "map_location") -> str:
    """A device as safetensors names it: "cpu" for every CPU device ("cpu:0" is refused by safe_open),
    else torch's own spelling ("cuda:1", "mps"). A string that is no device, or a device this
    machine does not have, is a ConfigError naming `arg` (the caller's argument) and the fix."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{arg} {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    cpu = f"{arg} cpu" if arg.startswith("--") else f"{arg}='cpu'"
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{arg} {device}: no usable CUDA GPU here (no NVIDIA driver or GPU, or a CPU-only torch); use {cpu}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ConfigError(f"{arg} {device}: this machine has {n} GPU(s); use cuda:0 to cuda:{n - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{arg} {device}: Apple MPS is not available here; use {cpu}")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{arg} {device}: controlfoley runs on cpu, cuda or mps")
    return "cpu" if dev.type == "cpu" else str(dev)


def __getattr__(name: str) -> Any:
    if name == "build_model":  # it moved to controlfoley.builder (which imports this module)
        from controlfoley.builder import build_model

        return build_model
    raise AttributeError(f"module 'controlfoley.model' has no attribute {name!r}")
