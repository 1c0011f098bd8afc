"""Register your own training recipe and train with it by name, as with the built-in ones.

The recipe "controlnet_smoothed" is the paper's ControlNet recipe with two changes:
- label smoothing on the masked-token cross-entropy (the loss it trains on: each masked token's
  target puts `label_smoothing` of its mass uniformly over the codebook), a setting of the
  recipe's own: a field of its `Options` dataclass, so a flag (`--label-smoothing 0.2`), checked
  (a float in [0, 1)) and recorded in the run's config.json (`recipe_options`);
- an extra logged statistic, `entropy_masked`: the mean entropy (nats) of the model's prediction
  at the masked tokens, which label smoothing keeps from collapsing towards 0.
`loss` stays the plain cross-entropy, so runs of both recipes compare on the same number.

It subclasses ControlNetRecipe, so it is based on "controlnet": that recipe's flags, defaults
(140K steps, batch 64, ...; `defaults` below changes one) and checks. On the command line, and in
every torchrun rank, load this file with --plugin:

    controlfoley train controlnet_smoothed --plugin examples/custom_recipe.py \\
        --preset specmaskfoley_tiny --data data/train --out runs/cn_smoothed --init runs/bb --label-smoothing 0.2
    controlfoley train controlnet_smoothed --out runs/cn_smoothed --resume   # its config.json records this file

Run:  python examples/custom_recipe.py   (a few steps on a tiny synthetic dataset in a temp folder)
"""

import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from controlfoley import RECIPES
from controlfoley.train import TrainConfig
from controlfoley.train.recipes import ControlNetRecipe, MaskedTokenObjective


class SmoothedObjective(MaskedTokenObjective):
    """The masked-token objective with label smoothing; statistics are sums over the masked tokens
    (the trainer sums them over micro-batches and ranks, and the recipe's summarize divides)."""

    def __init__(self, model: nn.Module, use_control: bool, smoothing: float) -> None:
        super().__init__(model, use_control)
        self.smoothing = smoothing

    def forward(self, batch: dict[str, torch.Tensor], mask: torch.Tensor, cond_on: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = self.model
        flat = batch["tokens"].long().flatten(1)
        cond = batch["clap"].float() if "clap" in batch else None
        if cond is not None:  # a clip stored without a prompt (all zeros) takes the unconditional mask, as in model.masked_cross_entropy
            cond_on = cond_on & (cond.abs().amax(-1) > 0)
        control = model.encode_control({k: batch[k].float() for k in self.control_keys}) if self.use_control else None
        logits = model(flat, mask, cond=cond, cond_on=cond_on if cond is not None else None, control=control)
        picked, target = logits[mask].float(), flat[mask]
        loss = F.cross_entropy(picked, target, reduction="sum", label_smoothing=self.smoothing)
        with torch.no_grad():
            logp = picked.log_softmax(-1)
            stats = {
                "ce": F.nll_loss(logp, target, reduction="sum"),  # the plain cross-entropy, logged as `loss`
                "smoothed": loss.detach(),
                "entropy": -(logp.exp() * logp).sum(),
                "correct": (picked.argmax(-1) == target).sum().float(),
                "masked": mask.sum().float(),
                "clips": picked.new_tensor(float(flat.shape[0])),
            }
        return loss, stats


@RECIPES.register("controlnet_smoothed")
class SmoothedControlNet(ControlNetRecipe):
    """The ControlNet recipe with label smoothing on the masked-token cross-entropy; logs the predictions' entropy."""

    @dataclass(frozen=True)
    class Options:  # the recipe's own settings: each field a flag (--label-smoothing), recorded in config.json
        label_smoothing: float = 0.1  # share of each masked token's target spread uniformly over the codebook (0: the plain cross-entropy)

        def __post_init__(self) -> None:  # run when the config is made: a bad value stops the run before it starts
            if not 0.0 <= self.label_smoothing < 1.0:
                raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    defaults = {"warmup_steps": 1_400}  # TrainConfig fields, over the controlnet recipe's: half its warm-up (of 140K steps)

    def objective(self, model: nn.Module, cfg: TrainConfig) -> nn.Module:
        opts: SmoothedControlNet.Options = self.options(cfg)  # this run's values (cfg.recipe_options)
        return SmoothedObjective(model, self.use_control, opts.label_smoothing)

    def summarize(self, stats: Mapping[str, torch.Tensor]) -> dict[str, float]:
        out = super().summarize(stats)  # loss (the plain cross-entropy), acc_masked, masked_per_clip
        masked = max(float(stats["masked"]), 1.0)
        return {**out, "loss_smoothed": float(stats["smoothed"]) / masked, "entropy_masked": float(stats["entropy"]) / masked}


def main() -> None:
    from controlfoley.data.extract import Extraction, extract_synthetic
    from controlfoley.train import read_metrics, train

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # a smoke run: tokens of an untrained tokenizer, and no --init (a random backbone); both said by a warning
        warnings.simplefilter("ignore")
        data, run = Path(tmp) / "data", Path(tmp) / "run"
        # 8 clips of the synthetic world: tokens, video features, CLAP-like embeddings
        ex = Extraction("specmaskfoley_tiny", extractors=("synthetic_sync", "synthetic_clip"), clap="synthetic_clap")
        extract_synthetic(data, ex, n_clips=8)
        cfg = TrainConfig.for_recipe(
            "controlnet_smoothed", preset="specmaskfoley_tiny", data=str(data), out=str(run), steps=4, batch_size=4,
            log_every=1, num_workers=0, progress=False, tensorboard=False, recipe_options={"label_smoothing": 0.2},
        )  # fmt: skip
        print(f"recipe {cfg.recipe}: uncond_prob {cfg.uncond_prob}, peak LR {cfg.peak_lr:.2e} (the controlnet recipe's defaults), {cfg.recipe_options}")
        train(cfg)
        for row in read_metrics(run, split="train"):
            print(f"step {row['step']}: loss {row['loss']:.3f}, smoothed {row['loss_smoothed']:.3f}, entropy_masked {row['entropy_masked']:.3f} nats")


if __name__ == "__main__":
    main()
