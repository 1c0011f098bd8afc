"""The CLAP text and audio encoders, through Hugging Face `transformers`, from a LOCAL folder.

SpecMaskFoley conditions its backbone on CLAP text embeddings (paper sec. 3.1, 3.4: the text&video
guidance row). "clap_transformers" (`ClapTextEncoder`, text extractor, key "clap") loads the text
tower and its projection (`ClapTextModelWithProjection`) and the tokenizer from a folder in the
layout `save_pretrained` writes (`config.json`, `model.safetensors`, tokenizer files), e.g. a copy
of `laion/clap-htsat-unfused` or `laion/larger_clap_general` made on a machine with network. A full
`ClapModel` folder works: its audio tower is not loaded. Nothing is downloaded
(`local_files_only=True`); a checkpoint that lacks any text-tower weight is refused, since
transformers would otherwise fill the gap with random weights (the constant buffers it rebuilds
exactly, `position_ids`, `token_type_ids` and the audio tower's `relative_position_index`, may be
absent: files converted from LAION-CLAP lack `token_type_ids`).

Embeddings are the projected text features, unit-normalised (as LAION-CLAP's
`get_text_embedding` and transformers' `ClapModel.get_text_features` give them; `normalize=False`
keeps the raw projection), `dim` = the projection width (512 for the LAION checkpoints, the
paper's CLAP width). Texts are tokenised with padding and truncated at `max_length` tokens (77,
LAION-CLAP's setting). An empty prompt is encoded as the empty string; the pipeline passes no text
at all for video-only guidance, so an empty prompt is never the "no text" condition.

"clap_audio_transformers" (`ClapAudioEncoder`, key "clap") is the audio tower of the same kind of
folder (`ClapAudioModelWithProjection` and the folder's `ClapFeatureExtractor`): the paper trains
its backbone on the CLAP *audio* embedding of each clip (sec. 3.4; "audio prompts during training
and text prompts during inference", Fig. 2), so `controlfoley extract --clap
clap_audio_transformers,folder=DIR` embeds every clip's own audio (cut to the model's window and
resampled to the feature extractor's 48 kHz) and needs no tags; prompts at generation are then
embedded by `clap_transformers` from the same folder, into the same joint space.

Needs `pip install 'controlfoley[clap]'`.

References: Wu et al., "Large-scale Contrastive Language-Audio Pretraining with Feature Fusion and
Keyword-to-Caption Augmentation" (ICASSP 2023); transformers `ClapTextModelWithProjection`.
"""

import contextlib
import json
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from controlfoley._legacy import _refusal
from controlfoley._registry import EXTRACTORS
from controlfoley.errors import CheckpointError, ConfigError, ShapeError, leading_line, require
from controlfoley.typing import Float, Tensor

__all__ = ["ClapTextEncoder", "clap_transformers", "ClapAudioEncoder", "clap_audio_transformers"]

_MODEL_TYPES = ("clap", "clap_text_model")  # a full ClapModel folder, or a text tower saved alone
_AUDIO_MODEL_TYPES = ("clap", "clap_audio_model")  # a full ClapModel folder, or an audio tower saved alone
# buffers of transformers' CLAP whose values follow from the config (ClapTextEmbeddings.position_ids
# and .token_type_ids, ClapAudioSelfAttention.relative_position_index), not from training
_DERIVED_BUFFERS = (".position_ids", ".token_type_ids", ".relative_position_index")


class ClapTextEncoder(nn.Module):
    """Prompt texts -> CLAP text embeddings [b, c] (see the module docstring)."""

    name = "clap_transformers"
    fps = None

    def __init__(self, model: nn.Module, tokenizer: Any, *, normalize: bool = True, max_length: int = 77, output_key: str = "clap") -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        config: Any = model.config  # a transformers ClapConfig / ClapTextConfig
        self.dim = int(config.projection_dim)
        # RoBERTa's positions start after the padding index: max_position_embeddings - 2 tokens fit
        self.max_length = min(int(max_length), int(config.max_position_embeddings) - 2)
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


# the weights file transformers reads from a save_pretrained folder, in the order it looks for them
_WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _weights_file(path: Path) -> Path | str:
    """The weights file of folder `path` that transformers reads (the folder itself where it has none);
    for a sharded checkpoint, the shard that does not read where one can be found ('one of the shards
    its index lists' otherwise)."""
    found = next((path / f for f in _WEIGHTS_FILES if (path / f).is_file()), path)
    if found.name != "model.safetensors.index.json":
        return found if not found.name.endswith(".index.json") else f"one of the shards {found} lists"
    try:
        from safetensors import safe_open

        shards = sorted(set(json.loads(found.read_text())["weight_map"].values()))
        for shard in shards:
            try:
                with safe_open(str(path / shard), framework="pt"):
                    pass
            except Exception:
                return path / shard
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return f"one of the shards {found} lists"


def _unreadable(name: str, path: Path, e: BaseException) -> CheckpointError:
    """The error for a weights file of folder `path` that does not read: a truncated or corrupt
    safetensors file, a pickle torch refuses (objects besides tensors) or cannot read."""
    file = _weights_file(path)
    if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in _refusal(e):
        return CheckpointError(
            f"{name}: {file} holds Python objects besides tensors (torch.load(weights_only=True) refused: {_refusal(e)}); "
            "transformers reads plain weights: re-save the model with save_pretrained where it loads (model.safetensors) "
            "and copy the folder again"
        )
    if isinstance(e, (pickle.UnpicklingError, EOFError)):
        return CheckpointError(
            f"{name}: {file} is not a readable PyTorch checkpoint: truncated, corrupt or another format "
            f"({type(e).__name__}: {_refusal(e)}); copy the checkpoint folder again"
        )
    return CheckpointError(f"{name}: {file} is not a readable safetensors file: truncated or corrupt ({leading_line(e)}); copy the checkpoint folder again")


def _shapes(entry: Any) -> str:
    """'KEY: checkpoint (..) vs model (..)' for one of transformers' mismatched keys (key, file shape, model shape)."""
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        key, got, want = entry
        return f"{key}: checkpoint {tuple(got)} vs model {tuple(want)}"
    return str(entry)


def _load_tower(transformers: Any, path: Path, name: str, tower: str, model_cls: Any, helper_cls: Any, helper: str) -> tuple[nn.Module, Any]:
    """One CLAP tower (`model_cls`) and its tokenizer or feature extractor (`helper_cls`) from a local
    folder, quietly; a folder that does not load, a weights file that does not read, a tensor of
    another shape than the config gives, or a missing weight of the tower, is a CheckpointError."""
    from safetensors import SafetensorError

    with _quiet_transformers(transformers):
        try:
            # ignore_mismatched_sizes: transformers reports the tensors of another shape (in
            # info["mismatched_keys"], named below) instead of raising with a report it logs
            model, info = model_cls.from_pretrained(str(path), local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True)
            extra = helper_cls.from_pretrained(str(path), local_files_only=True)
        except (SafetensorError, pickle.UnpicklingError, EOFError) as e:
            raise _unreadable(name, path, e) from e
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{name}: {path} does not load as a CLAP {tower} model with {helper} ({leading_line(e)})") from e
    # derived constants (position ids, zero token types, Swin relative position index) are rebuilt
    # exactly by transformers: a file without them, saved where they were not persistent or
    # converted from LAION-CLAP, risks no random weights
    missing = sorted(k for k in info.get("missing_keys") or () if not str(k).endswith(_DERIVED_BUFFERS))
    mismatched = sorted((_shapes(m) for m in info.get("mismatched_keys") or ()))
    if mismatched:
        lacks = f"; it also lacks {len(missing)} weight(s) of the tower (e.g. {', '.join(missing[:3])})" if missing else ""
        more = f", ... ({len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        raise CheckpointError(
            f"{name}: {_weights_file(path)} does not fit the CLAP {tower} tower its config.json describes: "
            f"{len(mismatched)} tensor(s) of another shape ({', '.join(mismatched[:3])}{more}){lacks}. "
            "Give the config.json and weights of one checkpoint (copy the whole folder again)"
        )
    if missing:
        raise CheckpointError(
            f"{name}: {path} lacks {len(missing)} weight(s) of the CLAP {tower} tower (e.g. {', '.join(missing[:3])}); "
            "transformers would initialise them at random. Give a complete CLAP checkpoint folder"
        )
    return model, extra


def _check_model_type(folder: Path, name: str = "clap_transformers", types: tuple[str, ...] = _MODEL_TYPES) -> None:
    """The folder holds a CLAP model (a full ClapModel or the tower `name` reads), by its config.json."""
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{name}: {folder} has no config.json; give a folder written by save_pretrained (a copy of e.g. laion/clap-htsat-unfused)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{name}: {config} is not a JSON object ({e}); re-copy the checkpoint folder") from e
    if model_type not in types:
        raise CheckpointError(f"{name}: {folder} holds a {model_type!r} model, not CLAP (model_type {' or '.join(types)})")


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
    model, tokenizer = _load_tower(
        transformers, path, "clap_transformers", "text", transformers.ClapTextModelWithProjection, transformers.AutoTokenizer, "its tokenizer"
    )
    return ClapTextEncoder(model.to(device), tokenizer, normalize=normalize, max_length=max_length, output_key=output_key)


setattr(clap_transformers, "width_from", "its weights: use another CLAP checkpoint")  # named by width errors (control.encoders.check_widths)


class ClapAudioEncoder(nn.Module):
    """Waveforms -> CLAP audio embeddings [b, c], the training-time prompt (see the module docstring)."""

    name = "clap_audio_transformers"
    fps = None

    def __init__(self, model: nn.Module, feature_extractor: Any, *, normalize: bool = True, output_key: str = "clap") -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.feature_extractor = feature_extractor
        config: Any = model.config  # a transformers ClapConfig / ClapAudioConfig
        self.dim = int(config.projection_dim)
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.normalize, self.output_key = bool(normalize), output_key

    @torch.no_grad()
    def encode_audio(self, wavs: Float[Tensor, "b s"], sample_rate: int) -> Float[Tensor, "b c"]:
        """Mono waveforms at `sample_rate` -> embeddings; resampled to the feature extractor's rate first."""
        import librosa

        if not isinstance(wavs, Tensor) or wavs.ndim != 2 or wavs.shape[-1] == 0:
            got = list(wavs.shape) if isinstance(wavs, Tensor) else type(wavs).__name__
            raise ShapeError(f"{self.name}: encode_audio takes mono waveforms [batch, samples], got {got}")
        arrays = [w.detach().float().cpu().numpy() for w in wavs]
        if int(sample_rate) != self.sample_rate:
            arrays = [librosa.resample(a, orig_sr=int(sample_rate), target_sr=self.sample_rate) for a in arrays]
        inputs = self.feature_extractor(arrays, sampling_rate=self.sample_rate, return_tensors="pt")
        device = next(self.model.parameters()).device
        out = self.model(**{k: v.to(device) for k, v in inputs.items() if k in ("input_features", "is_longer")})
        emb = out.audio_embeds.float()
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def encode_text(self, texts: Sequence[str]) -> Float[Tensor, "b c"]:
        raise ConfigError(
            f"{self.name} embeds audio (each clip's own, the training prompt), not text; embed prompts with "
            "clap_transformers,folder=<the same folder> (generate --text-encoder), or drop the tags"
        )

    def forward(self, wavs: Float[Tensor, "b s"], sample_rate: int) -> Float[Tensor, "b c"]:
        return self.encode_audio(wavs, sample_rate)


@EXTRACTORS.register("clap_audio_transformers")
def clap_audio_transformers(
    *,
    folder: str | os.PathLike[str],
    normalize: bool = True,
    output_key: str = "clap",
    device: str = "cpu",
) -> ClapAudioEncoder:
    """CLAP audio embeddings of each clip's audio (the paper's training prompt), from a LOCAL checkpoint folder."""
    transformers = require("transformers", extra="clap", purpose="the clap_audio_transformers audio encoder")
    name = "clap_audio_transformers"
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"{name}: folder {path} not found; this encoder loads a local save_pretrained folder only")
    _check_model_type(path, name, _AUDIO_MODEL_TYPES)
    if not (path / "preprocessor_config.json").is_file():
        raise CheckpointError(
            f"{name}: {path} has no preprocessor_config.json, the ClapFeatureExtractor settings the audio tower was trained with; "
            "copy the whole checkpoint folder (ClapProcessor.save_pretrained writes it)"
        )
    model, features = _load_tower(
        transformers, path, name, "audio", transformers.ClapAudioModelWithProjection, transformers.ClapFeatureExtractor, "its feature extractor"
    )
    fused = bool(getattr(model.config, "enable_fusion", False))
    if fused != (getattr(features, "truncation", None) == "fusion"):
        raise CheckpointError(
            f"{name}: {path}'s audio tower has enable_fusion={fused} but its feature extractor truncation={features.truncation!r}; "
            "a fused model needs truncation='fusion' and an unfused one another (e.g. 'rand_trunc'): re-copy the folder"
        )
    return ClapAudioEncoder(model.to(device), features, normalize=normalize, output_key=output_key)


setattr(clap_audio_transformers, "width_from", "its weights: use another CLAP checkpoint")
