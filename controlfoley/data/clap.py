"""The CLAP text encoder for real prompts, through Hugging Face `transformers`, from a LOCAL folder.

SpecMaskFoley conditions its backbone on CLAP text embeddings (paper sec. 3.1, 3.4: the text&video
guidance row). "clap_transformers" (`ClapTextEncoder`, text extractor, key "clap") loads the text
tower and its projection (`ClapTextModelWithProjection`) and the tokenizer from a folder in the
layout `save_pretrained` writes (`config.json`, `model.safetensors`, tokenizer files), e.g. a copy
of `laion/clap-htsat-unfused` or `laion/larger_clap_general` made on a machine with network. A full
`ClapModel` folder works: its audio tower is not loaded. Nothing is downloaded
(`local_files_only=True`); a checkpoint that lacks any text-tower weight is refused, since
transformers would otherwise fill the gap with random weights.

Embeddings are the projected text features, unit-normalised (as LAION-CLAP's
`get_text_embedding` and transformers' `ClapModel.get_text_features` give them; `normalize=False`
keeps the raw projection), `dim` = the projection width (512 for the LAION checkpoints, the
paper's CLAP width). Texts are tokenised with padding and truncated at `max_length` tokens (77,
LAION-CLAP's setting). An empty prompt is encoded as the empty string; the pipeline passes no text
at all for video-only guidance, so an empty prompt is never the "no text" condition.

Needs `pip install 'controlfoley[clap]'`.

References: Wu et al., "Large-scale Contrastive Language-Audio Pretraining with Feature Fusion and
Keyword-to-Caption Augmentation" (ICASSP 2023); transformers `ClapTextModelWithProjection`.
"""

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from controlfoley._registry import EXTRACTORS
from controlfoley.errors import CheckpointError, ConfigError, require
from controlfoley.typing import Float, Tensor

__all__ = ["ClapTextEncoder", "clap_transformers"]

_MODEL_TYPES = ("clap", "clap_text_model")  # a full ClapModel folder, or a text tower saved alone


class ClapTextEncoder(nn.Module):
    """Prompt texts -> CLAP text embeddings [b, c] (see the module docstring)."""

    name = "clap_transformers"
    fps = None

    def __init__(self, model: nn.Module, tokenizer: Any, *, normalize: bool = True, max_length: int = 77, output_key: str = "clap") -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.dim = int(model.config.projection_dim)
        # RoBERTa's positions start after the padding index: max_position_embeddings - 2 tokens fit
        self.max_length = min(int(max_length), int(model.config.max_position_embeddings) - 2)
        self.normalize, self.output_key = bool(normalize), output_key

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Float[Tensor, "b c"]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"encode_text takes a list of strings, got {texts!r}")
        device = next(self.model.parameters()).device
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = self.model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
        emb = out.text_embeds.float()
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def forward(self, texts: Sequence[str]) -> Float[Tensor, "b c"]:
        return self.encode_text(texts)


@contextlib.contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """transformers prints a load report (the audio weights it skips) and a progress bar; both are
    noise here, since missing weights are checked below. Its global settings are restored after."""
    logging = transformers.utils.logging
    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


def _check_model_type(folder: Path) -> None:
    """The folder holds a CLAP model (a full ClapModel or its text tower), by its config.json."""
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(f"clap_transformers: {folder} has no config.json; give a folder written by save_pretrained (a copy of e.g. laion/clap-htsat-unfused)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"clap_transformers: {config} is not a JSON object ({e}); re-copy the checkpoint folder") from e
    if model_type not in _MODEL_TYPES:
        raise CheckpointError(f"clap_transformers: {folder} holds a {model_type!r} model, not CLAP (model_type {' or '.join(_MODEL_TYPES)})")


@EXTRACTORS.register("clap_transformers")
def clap_transformers(
    *,
    folder: str | os.PathLike[str],
    normalize: bool = True,
    max_length: int = 77,
    output_key: str = "clap",
    device: str = "cpu",
) -> ClapTextEncoder:
    """CLAP text embeddings through transformers from a LOCAL checkpoint folder (no download)."""
    transformers = require("transformers", extra="clap", purpose="the clap_transformers text encoder")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"clap_transformers: folder {path} not found; this encoder loads a local save_pretrained folder only")
    if max_length < 1:
        raise ConfigError(f"clap_transformers: max_length must be >= 1, got {max_length}")
    _check_model_type(path)
    with _quiet_transformers(transformers):
        try:
            model, info = transformers.ClapTextModelWithProjection.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"clap_transformers: {path} does not load as a CLAP text model with its tokenizer ({first})") from e
    missing = sorted(info.get("missing_keys") or ()) + sorted(str(k) for k in info.get("mismatched_keys") or ())
    if missing:
        raise CheckpointError(
            f"clap_transformers: {path} lacks {len(missing)} weight(s) of the CLAP text tower (e.g. {', '.join(missing[:3])}); "
            "transformers would initialise them at random. Give a complete CLAP checkpoint folder"
        )
    return ClapTextEncoder(model.to(device), tokenizer, normalize=normalize, max_length=max_length, output_key=output_key)


clap_transformers.width_from = "its weights: use another CLAP checkpoint"  # named by width errors (control.encoders.check_widths)
