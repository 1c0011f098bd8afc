"""The training recipes: what trains, on which inputs, with which loss.

Recipes are the entries of the `RECIPES` registry (`controlfoley.RECIPES`): `Recipe` subclasses,
looked up by name (`TrainConfig.recipe`, `controlfoley train NAME`). Three are built in; a user
recipe is a subclass registered by a plugin (`--plugin my_recipe.py`), checked when registered
(`check_recipe`). It takes the command-line flags, defaults and checks of its `base` built-in
recipe (inherited: a subclass of ControlNetRecipe is based on "controlnet"), its own `defaults`
over them; its own settings are the fields of its `Options` dataclass, each a flag of its own
(`--label-smoothing 0.1`), held in `TrainConfig.recipe_options` and read with `self.options(cfg)`;
see examples/custom_recipe.py. The built-ins:

- `tokenizer`: the SpecVQGAN tokenizer alone, on stored mels: L1 (and optionally L2)
  reconstruction + the VQ loss (codebook + beta x commitment), and optionally a PatchGAN hinge term
  (`adv_weight` > 0, off by default; `train.adversarial`); reports codebook usage and perplexity
  from the code histogram of the whole global batch.
- `backbone`: SpecMaskGIT masked-token pretraining (MaskGIT: mask ratio from the model's sampler
  schedule, cosine in the presets; cross-entropy on masked tokens) with the conditional mask: the
  CLAP-like `clap` feature, when the dataset has it, is replaced by the unconditional mask with
  probability `uncond_prob`.
- `controlnet`: SpecMaskFoley sec. 4.2: backbone frozen (`freeze_backbone`), video features through
  control encoder -> aligner -> ControlNet, CLAP replaced by the unconditional mask on 90% of steps,
  cross-entropy only.

Exact global normalisation: the random parts of a step (token masks, condition drops) are drawn
for the whole global batch from a generator seeded by (seed, step) - the `StepPlan` - and every
rank and micro-batch takes its rows. Each objective returns a *sum* over its rows; the trainer
divides by the global count (masked tokens, or clips), so gradients do not depend on how a batch
is split over ranks and accumulation steps, and a resumed run draws the same masks.
"""

import abc
import dataclasses
import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from controlfoley._registry import RECIPES, RegistryError
from controlfoley._static import TokenizerModule
from controlfoley.config import ConfigError
from controlfoley.control.encoders import control_encoder_of
from controlfoley.data.dataset import ShardDataset, require_features
from controlfoley.errors import DataError, ShapeError
from controlfoley.model import SpecMaskFoley, masked_token_mask
from controlfoley.train.adversarial import PatchDiscriminator, hinge_losses
from controlfoley.train.config import BUILTIN_RECIPES, TrainConfig, option_specs, recipe_class
from controlfoley.tokenizers.base import RestartableTokenizer
from controlfoley.typing import Bool, Float, Tensor

__all__ = [
    "Recipe", "TokenizerRecipe", "MaskedTokenRecipe", "ControlNetRecipe", "StepPlan", "TokenizerObjective", "MaskedTokenObjective",
    "RECIPES", "get_recipe", "check_recipe", "step_generator", "train_only",
]  # fmt: skip


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, stream): no state to save for resuming."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) * 7 + int(stream))


@dataclass(frozen=True)
class StepPlan:
    """Random choices of one global batch: per-row tensors (first dim = global batch) and the
    count the summed loss is divided by."""

    rows: dict[str, Tensor]
    denom: float


class TokenizerObjective(nn.Module):
    """Reconstruction + VQ (+ optional adversarial) loss of the tokenizer, summed over the clips of a micro-batch."""

    def __init__(self, tokenizer: TokenizerModule, l1_weight: float, l2_weight: float, vq_weight: float, disc: PatchDiscriminator | None = None) -> None:
        super().__init__()
        self.tokenizer, self.disc = tokenizer, disc
        self.l1_weight, self.l2_weight, self.vq_weight = l1_weight, l2_weight, vq_weight

    def forward(self, batch: dict[str, Tensor], adv_scale: Float[Tensor, " b"]) -> tuple[Float[Tensor, ""], dict[str, Tensor]]:
        """`adv_scale`: per-clip weight of the adversarial term (0 before `adv_start_step`)."""
        mel = batch["mel"].float()
        recon, codes, vq = self.tokenizer(mel)
        err = (recon.float() - mel).flatten(1)
        l1, l2 = err.abs().mean(1), err.pow(2).mean(1)  # per clip
        b = mel.shape[0]
        vq_sum = vq.float() * b  # vq is a mean over equally sized clips: x b gives the sum of per-clip means
        loss = self.l1_weight * l1.sum() + self.l2_weight * l2.sum() + self.vq_weight * vq_sum
        stats = {"rec_l1": l1.sum().detach(), "rec_l2": l2.sum().detach(), "vq": vq_sum.detach(), "clips": mel.new_tensor(float(b))}
        total = loss
        if self.disc is not None:
            g, d = hinge_losses(self.disc, mel, recon.float())
            adv_g, adv_d = (adv_scale * g).sum(), ((adv_scale > 0).float() * d).sum()
            loss = loss + adv_g
            total = loss + adv_d  # the discriminator's term trains only the discriminator
            stats.update(adv_g=g.sum().detach(), adv_d=d.sum().detach())
        stats["loss"] = loss.detach()
        stats["code_hist"] = torch.bincount(codes.flatten(), minlength=self.tokenizer.codebook_size).float()
        return total, stats

    @torch.no_grad()
    def restart_codes(self, batches: list[dict[str, Tensor]], seed: int) -> int:
        """Restart the codebook entries that no clip of the whole step selects: all of this rank's
        micro-batches (and, inside `restart_dead_codes`, all ranks), so a step with gradient
        accumulation makes the same decision as one big batch, once per optimizer step."""
        tokenizer = cast(RestartableTokenizer, self.tokenizer)  # TokenizerRecipe checks it is one when restarts are on
        return tokenizer.restart_dead_codes([b["mel"].float() for b in batches], torch.Generator().manual_seed(seed))


class MaskedTokenObjective(nn.Module):
    """Masked-token cross-entropy (summed over the masked tokens of a micro-batch)."""

    def __init__(self, model: SpecMaskFoley, use_control: bool) -> None:
        super().__init__()
        self.model = model
        self.use_control = use_control
        self.control_keys = tuple(control_encoder_of(model).required_features) if use_control else ()

    def forward(self, batch: dict[str, Tensor], mask: Bool[Tensor, "b l"], cond_on: Bool[Tensor, " b"]) -> tuple[Float[Tensor, ""], dict[str, Tensor]]:
        model = self.model
        codes = batch["tokens"].long()
        if tuple(codes.shape[1:]) != model.grid:
            raise ShapeError(f"token maps must be [batch, {model.grid[0]}, {model.grid[1]}], got {list(codes.shape)}")
        flat = codes.flatten(1)
        cond = batch["clap"].float() if "clap" in batch else None
        control = model.encode_control({k: batch[k].float() for k in self.control_keys}) if self.use_control else None
        ce, correct = model.masked_cross_entropy(flat, mask, cond=cond, cond_on=cond_on if cond is not None else None, control=control)
        stats = {"ce": ce.detach(), "correct": correct, "masked": mask.sum().float(), "clips": ce.new_tensor(float(codes.shape[0]))}
        return ce, stats


class Recipe(abc.ABC):
    """What one recipe trains and how; subclasses fill in the parts that differ."""

    name = ""  # the name it is registered under (set by get_recipe)
    # The built-in recipe this one is based on: "tokenizer", "backbone", "controlnet", or None (a
    # recipe of your own from scratch: only the flags every recipe has). It gives the recipe that
    # recipe's command-line flags, RECIPE_DEFAULTS and checks (TrainConfig.trainable, the warning
    # of a controlnet run without --init). Inherited: a subclass of ControlNetRecipe is "controlnet".
    base: str | None = None
    # TrainConfig fields this recipe sets, over its base's RECIPE_DEFAULTS and the `defaults` of the
    # classes it derives from (nearest last; `controlfoley.train.config.recipe_defaults`): defaults
    # of the Python API and the command line, which --config files and flags override
    defaults: Mapping[str, Any] = {}
    # The recipe's own settings: None, or a dataclass whose fields (typed int, float, str, bool,
    # X | None or a Literal of choices; each with a default; its help the field's comment or
    # metadata["help"]) become flags (`label_smoothing` -> `--label-smoothing`), checked by type and
    # by the dataclass's own __post_init__, recorded in config.json (TrainConfig.recipe_options),
    # so --print-config, --config and --resume carry them. A dataclass rather than a dict of
    # defaults: each option has a declared type (checked; flags parse to it) and `self.options(cfg)`
    # is an object a type checker knows the attributes of. Inherited, as `defaults`; a subclass
    # adds options by deriving its Options from its parent's.
    Options: type | None = None
    objective_args: tuple[str, ...] = ()  # keys of StepPlan.rows passed to the objective
    # metrics that count events (not averages): the loop logs their sum since the previous log line
    interval_sums: tuple[str, ...] = ()

    def options(self, cfg: TrainConfig) -> Any:
        """This run's settings of the recipe: its `Options` built from `cfg.recipe_options` (checked
        when the config was made), or None for a recipe that declares none. The methods that get
        `cfg` (objective, plan, val_plan) read them; annotate for a type checker:
        `opts: MyRecipe.Options = self.options(cfg)`."""
        return None if self.Options is None else self.Options(**cfg.recipe_options)

    @abc.abstractmethod
    def prepare(self, model: SpecMaskFoley) -> None:
        """Set requires_grad: what trains and what stays frozen."""

    @abc.abstractmethod
    def needed_keys(self, model: SpecMaskFoley, ds: ShardDataset) -> tuple[str, ...]:
        """Dataset features this recipe reads."""

    @abc.abstractmethod
    def check_data(self, model: SpecMaskFoley, ds: ShardDataset) -> None:
        """DataError before any step when the dataset does not fit this model."""

    @abc.abstractmethod
    def objective(self, model: SpecMaskFoley, cfg: TrainConfig) -> nn.Module:
        """The module DDP wraps: forward(batch, *plan rows) -> (summed loss, summed statistics)."""

    @abc.abstractmethod
    def summarize(self, stats: Mapping[str, Tensor]) -> dict[str, float]:
        """Metrics from statistics summed over micro-batches and ranks."""

    def fit_to_data(self, model: SpecMaskFoley, ds: ShardDataset) -> None:
        """Freeze what this dataset cannot train (so DDP sees no parameter without a gradient)."""

    def plan(self, cfg: TrainConfig, model: SpecMaskFoley, step: int, batch: int) -> StepPlan:
        """The step's random choices; by default none, and the loss is a mean over clips."""
        return StepPlan({}, float(batch))

    def val_plan(self, cfg: TrainConfig, model: SpecMaskFoley, clip_indices: list[int]) -> StepPlan:
        return StepPlan({}, 1.0)

    def aux_modules(self, objective: nn.Module) -> dict[str, nn.Module]:
        """Trained modules outside the model (saved in the checkpoint's state file)."""
        return {}

    def before_step(self, objective: nn.Module, batches: list[dict[str, Tensor]], plan: StepPlan) -> dict[str, Tensor]:
        """Runs once per optimizer step, before any forward, with all of this rank's micro-batches:
        for changes that must see the whole step's data (the tokenizer's codebook restarts). Every
        rank must return the same keys; the values are summed over ranks with the step's statistics."""
        return {}


def check_recipe(name: str, entry: Any) -> None:
    """A RegistryError naming what is wrong when `entry` cannot be registered as recipe `name`: it
    must be a Recipe subclass that defines every abstract method, with a known `base`, `defaults`
    that name TrainConfig fields and `Options` a command line can take (`option_specs`). (The
    RECIPES registry calls it at registration.)"""
    what = f"recipe {name!r}"
    if not (isinstance(entry, type) and issubclass(entry, Recipe)):
        got = f"class {entry.__qualname__}" if isinstance(entry, type) else f"{type(entry).__name__} {entry!r}"
        raise RegistryError(
            f"{what}: register a subclass of controlfoley.train.recipes.Recipe (e.g. of ControlNetRecipe, to change the "
            f"controlnet recipe), got {got}"
        )
    what = f"{what} ({entry.__qualname__})"
    missing = sorted(getattr(entry, "__abstractmethods__", ()))
    if missing:
        raise RegistryError(
            f"{what} does not define {', '.join(missing)}: a Recipe subclass must define {', '.join(sorted(Recipe.__abstractmethods__))} "
            "(or derive from a recipe that does, such as ControlNetRecipe)"
        )
    base = getattr(entry, "base", None)
    if base is not None and base not in BUILTIN_RECIPES:
        raise RegistryError(f"{what}: base = {base!r}; it must be one of {', '.join(map(repr, BUILTIN_RECIPES))} or None (its flags and defaults)")
    option_specs(getattr(entry, "Options", None), what)  # a command line can take its options (RegistryError naming the one it cannot)
    own = getattr(entry, "Options", None)
    for klass in entry.__mro__[1:]:  # a parent's options are read by the parent's code, which the recipe inherits
        theirs = vars(klass).get("Options")
        if theirs is not None:
            if not (isinstance(own, type) and isinstance(theirs, type) and issubclass(own, theirs)):
                raise RegistryError(
                    f"{what}: its Options ({getattr(own, '__qualname__', own)!r}) replaces {klass.__name__}.Options instead of deriving "
                    f"from it, so the code it inherits from {klass.__name__} would not find those settings; declare "
                    f"`@dataclass(frozen=True) class Options({klass.__name__}.Options): ...` to add options"
                )
            break
    known = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("recipe", "recipe_options", "plugins")]
    unknown: list[str] = []
    for klass in entry.__mro__:
        d = vars(klass).get("defaults")
        if d is not None and not isinstance(d, Mapping):
            raise RegistryError(f"{what}: {klass.__qualname__}.defaults must be a dict of TrainConfig fields, got {type(d).__name__} {d!r}")
        unknown += [k for k in d or {} if k not in known and k not in unknown]
    if unknown:
        close = {k: difflib.get_close_matches(str(k), known, n=2) for k in unknown}  # 'warmup': 'ema_warmup' or 'warmup_steps'
        hint = "".join(f" ({k!r}: did you mean {' or '.join(map(repr, c))}?)" for k, c in close.items() if c)
        own = " (the recipe's own settings are the fields of its Options dataclass)" if {"recipe_options", "plugins"} & set(unknown) else ""
        raise RegistryError(f"{what}: defaults name unknown TrainConfig field(s) {unknown}{hint}; the fields: {', '.join(known)}{own}")


@RECIPES.register("tokenizer")
class TokenizerRecipe(Recipe):
    """The SpecVQGAN tokenizer alone, on stored mels: reconstruction + VQ loss (+ optional PatchGAN term)."""

    name = "tokenizer"
    base = "tokenizer"
    objective_args = ("adv_scale",)
    interval_sums = ("codes_restarted",)

    def prepare(self, model: SpecMaskFoley) -> None:
        model.requires_grad_(False)
        model.tokenizer.requires_grad_(True)

    def needed_keys(self, model: SpecMaskFoley, ds: ShardDataset) -> tuple[str, ...]:
        return ("mel",)

    def check_data(self, model: SpecMaskFoley, ds: ShardDataset) -> None:
        want = (int(model.tokenizer.n_mels), int(model.config.n_frames))
        require_features(ds, {"mel": want}, hint="Extract mels with `controlfoley extract --mel` for this preset.")

    def objective(self, model: SpecMaskFoley, cfg: TrainConfig) -> nn.Module:
        tok = model.tokenizer
        name = model.config.tokenizer.name
        if not isinstance(tok, nn.Module) or type(tok).forward is nn.Module.forward:
            raise ConfigError(
                f"the tokenizer recipe trains the tokenizer through its forward(mel) -> (recon, codes, vq_loss), "
                f"which tokenizer {name!r} ({type(tok).__name__}) does not define; add it "
                "(see controlfoley.tokenizers.base.TrainableTokenizer) or train this tokenizer elsewhere"
            )
        if cfg.codebook_restart_every > 0 and not callable(getattr(tok, "restart_dead_codes", None)):
            raise ConfigError(
                f"--codebook-restart-every {cfg.codebook_restart_every} needs tokenizer.restart_dead_codes(mels, generator), "
                f"which tokenizer {name!r} ({type(tok).__name__}) does not define; add it "
                "(see controlfoley.tokenizers.base.RestartableTokenizer) or set --codebook-restart-every 0"
            )
        disc = PatchDiscriminator(cfg.disc_channels) if cfg.adv_weight > 0 else None
        return TokenizerObjective(model.tokenizer, cfg.l1_weight, cfg.l2_weight, cfg.vq_weight, disc)

    def aux_modules(self, objective: nn.Module) -> dict[str, nn.Module]:
        disc = cast(TokenizerObjective, objective).disc  # this recipe's objective()
        return {} if disc is None else {"disc": disc}

    def plan(self, cfg: TrainConfig, model: SpecMaskFoley, step: int, batch: int) -> StepPlan:
        on = cfg.adv_weight if step >= cfg.adv_start_step else 0.0
        every = cfg.codebook_restart_every
        # >= 0 for any seed (a negative --seed turned restarts off: -1 marks "no restart this step");
        # seeds in [0, 2**31) keep their streams
        restart = (cfg.seed % 2**31) * 1_000_003 + step if every > 0 and step % every == 0 and step < cfg.codebook_restart_until else -1
        return StepPlan({"adv_scale": torch.full((batch,), on), "restart_seed": torch.full((batch,), restart, dtype=torch.long)}, float(batch))

    def val_plan(self, cfg: TrainConfig, model: SpecMaskFoley, clip_indices: list[int]) -> StepPlan:
        n = len(clip_indices)
        return StepPlan({"adv_scale": torch.full((n,), cfg.adv_weight)}, 1.0)

    def before_step(self, objective: nn.Module, batches: list[dict[str, Tensor]], plan: StepPlan) -> dict[str, Tensor]:
        seed = int(plan.rows["restart_seed"][0])
        moved = cast(TokenizerObjective, objective).restart_codes(batches, seed) if seed >= 0 and objective.training else 0  # this recipe's objective()
        # every rank moved the same codes; count them once in the sum over ranks
        first = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0
        return {"codes_restarted": torch.tensor(float(moved if first else 0))}

    def summarize(self, stats: Mapping[str, Tensor]) -> dict[str, float]:
        n = float(stats["clips"])
        hist = stats["code_hist"].double()
        p = hist / hist.sum().clamp_min(1.0)
        perplexity = float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
        used = int((hist > 0).sum())
        out = {k: float(stats[k]) / n for k in ("loss", "rec_l1", "rec_l2", "vq", "adv_g", "adv_d") if k in stats}
        out["codes_restarted"] = float(stats["codes_restarted"]) if "codes_restarted" in stats else 0.0
        return {**out, "codebook_used": float(used), "codebook_frac": used / hist.numel(), "perplexity": perplexity}


def _extracted_for_hint(model: SpecMaskFoley, ds: ShardDataset) -> str:
    """How to make the dataset fit: where its index records another model (preset or window), train
    with that preset; where it records a tokenizer (or mel) other than this model's (extracted with
    --model tokenizer=..., say), train with that; else extract it anew. A record it cannot read
    gives the plain advice (the data may fit: this is computed before the check)."""
    generic = f"Extract the dataset for this preset ({model.config.name}): `controlfoley extract --preset {model.config.name} ...`."
    try:
        return _recorded_hint(model.config.to_dict(), ds.info.get("model"), model.config.name) or generic
    except (TypeError, AttributeError, ValueError):
        return generic


def _recorded_hint(ours: dict[str, Any], recorded: Any, preset: str) -> str | None:
    if not isinstance(recorded, Mapping):
        return None
    anew = f"or extract it anew for this model (`controlfoley extract --preset {preset} ...`)"
    if recorded.get("name") != ours.get("name") or recorded.get("n_frames") not in (None, ours.get("n_frames")):  # another preset or window
        return (
            f"The dataset records that it was extracted for the model {recorded.get('name')!r} ({recorded.get('n_frames')} mel frames); "
            f"this one is {ours.get('name')!r} ({ours.get('n_frames')}): train with --preset {recorded.get('name')} (and the --model "
            f"overrides it was extracted with), {anew}."
        )
    differ = [
        f for f in ("mel", "tokenizer")
        if isinstance(recorded.get(f), Mapping) and isinstance(recorded[f].get("kwargs") or {}, Mapping) and recorded.get(f) != ours.get(f)
    ]  # fmt: skip
    if not differ:
        return None
    flat = {f: {"name": recorded[f].get("name"), **(recorded[f].get("kwargs") or {})} for f in differ}  # --model's form
    flags = " ".join(f"--model {f}='{json.dumps(flat[f], separators=(',', ':'))}'" for f in differ)
    theirs = ", ".join(f"{f} {recorded[f].get('name')!r}" for f in differ)
    mine = ", ".join(f"{f} {(ours.get(f) or {}).get('name')!r}" for f in differ)
    return f"The dataset records that it was extracted with {theirs}; this model builds {mine}: train with the dataset's ({flags}), {anew}."


@RECIPES.register("backbone")
class MaskedTokenRecipe(Recipe):
    """SpecMaskGIT masked-token pretraining of the backbone on stored tokens (and CLAP-like conditions)."""

    name = "backbone"
    base = "backbone"
    objective_args = ("mask", "cond_on")
    use_control = False

    def prepare(self, model: SpecMaskFoley) -> None:
        model.requires_grad_(False)
        model.backbone.requires_grad_(True)

    def needed_keys(self, model: SpecMaskFoley, ds: ShardDataset) -> tuple[str, ...]:
        keys = ["tokens", *(k for k in ("clap",) if k in ds.index.features)]
        if self.use_control:
            keys += list(control_encoder_of(model).required_features)
        return tuple(keys)

    def check_data(self, model: SpecMaskFoley, ds: ShardDataset) -> None:
        hint = _extracted_for_hint(model, ds)
        require_features(ds, {"tokens": model.grid, "clap": (int(model.backbone.cond_dim),)}, optional=("clap",), hint=hint)
        dtype = ds.index.features["tokens"].dtype
        if not dtype.startswith(("int", "uint")):
            raise DataError(f"dataset {ds.root}: tokens are stored as {dtype}; token maps must be integers. {hint}")
        size = ds.info.get("codebook_size")
        if size is not None and int(size) != int(model.backbone.vocab_size):
            raise DataError(f"dataset {ds.root} was tokenized with a codebook of {size}, this model's has {model.backbone.vocab_size}. {hint}")

    def fit_to_data(self, model: SpecMaskFoley, ds: ShardDataset) -> None:
        proj = getattr(model.backbone, "cond_proj", None)  # optional in the Backbone contract
        if "clap" not in ds.keys and proj is not None:  # no condition ever reaches the CLAP projection
            proj.requires_grad_(False)

    def objective(self, model: SpecMaskFoley, cfg: TrainConfig) -> nn.Module:
        return MaskedTokenObjective(model, self.use_control)

    def _draw(self, cfg: TrainConfig, model: SpecMaskFoley, batch: int, g: torch.Generator) -> dict[str, Tensor]:
        # the masked fraction follows the schedule the model samples with (MaskGIT), as in model.loss
        mask = masked_token_mask(batch, model.n_tokens, g, torch.device("cpu"), model.sampler.mask_schedule)
        if cfg.uncond_per == "sample":
            cond_on = torch.rand(batch, generator=g) >= cfg.uncond_prob
        else:
            cond_on = (torch.rand(1, generator=g) >= cfg.uncond_prob).expand(batch).clone()
        return {"mask": mask, "cond_on": cond_on}

    def plan(self, cfg: TrainConfig, model: SpecMaskFoley, step: int, batch: int) -> StepPlan:
        rows = self._draw(cfg, model, batch, step_generator(cfg.seed, step))
        return StepPlan(rows, float(rows["mask"].sum()))

    def val_plan(self, cfg: TrainConfig, model: SpecMaskFoley, clip_indices: list[int]) -> StepPlan:
        # one generator per clip: the validation loss does not depend on batching or rank count
        parts = [self._draw(cfg.replace(uncond_per="sample"), model, 1, step_generator(cfg.seed, i, stream=1)) for i in clip_indices]
        return StepPlan({k: torch.cat([p[k] for p in parts]) for k in ("mask", "cond_on")}, 1.0)

    def summarize(self, stats: Mapping[str, Tensor]) -> dict[str, float]:
        masked = max(float(stats["masked"]), 1.0)
        return {"loss": float(stats["ce"]) / masked, "acc_masked": float(stats["correct"]) / masked, "masked_per_clip": masked / float(stats["clips"])}


@RECIPES.register("controlnet")
class ControlNetRecipe(MaskedTokenRecipe):
    """The paper's ControlNet recipe (sec. 4.2): backbone frozen, video features through the control path, masked-token cross-entropy."""

    name = "controlnet"
    base = "controlnet"
    use_control = True

    def prepare(self, model: SpecMaskFoley) -> None:
        if not model.has_control:
            raise ConfigError(f"preset {model.config.name!r} has no ControlNet; the controlnet recipe needs one (e.g. specmaskfoley)")
        model.freeze_backbone()

    def check_data(self, model: SpecMaskFoley, ds: ShardDataset) -> None:
        super().check_data(model, ds)
        keys = tuple(control_encoder_of(model).required_features)
        require_features(ds, {k: None for k in keys}, hint="Extract the video features with `controlfoley extract`.")
        first = ds[0]
        try:  # one clip through the control encoder: feature widths of another preset fail here
            with torch.no_grad():
                control_encoder_of(model)({k: first[k].float()[None].to(model.device) for k in keys})
        except ShapeError as e:
            raise DataError(f"dataset {ds.root}: its video features do not fit this model: {e}") from e


def train_only(model: nn.Module, parts: Sequence[str]) -> None:
    """Only the model parts named in `parts` trainable (`TrainConfig.trainable`, which replaces the
    recipe's choice): the training loop applies it after `Recipe.prepare`, `controlfoley info RUN`
    to count a run's split."""
    model.requires_grad_(False)
    for part in parts:
        getattr(model, part).requires_grad_(True)


def get_recipe(name: str) -> Recipe:
    """A new instance of the recipe registered as `name` (a RecipeError, the registry's message, when none is)."""
    recipe = recipe_class(name)()
    recipe.name = name
    return recipe
