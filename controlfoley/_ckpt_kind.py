"""Which public weights file a state dict is, from its key names, and where such a file loads.

Loaders use it when a file does not fit the part it was given for: a HiFi-GAN generator handed to
the tokenizer, a controlfoley checkpoint handed to a vocoder, HiFi-GAN's discriminator file
(`do_<step>`, e.g. do_02500000) in place of its generator (`g_<step>`). The error then names what the file is
and the call that loads it, instead of advising another architecture. Also `adapt_names`: the
naming variants of one layout that loaders accept (a DDP `module.` prefix, torch's newer
weight-norm parametrisation names, weight norm folded into a plain `weight`).

The signatures follow the layouts in the project's checkpoint reference (SpecVQGAN, HiFi-GAN,
MelGAN, BigVGAN) and controlfoley's own top-level part names.
"""

import json
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["Kind", "identify", "identify_container", "adapt_names", "strip_prefix", "mismatch_advice", "is_torch_pickle", "layers_beyond"]


class Kind(NamedTuple):
    key: str  # "specvqgan", "hifigan", "melgan", "bigvgan", "controlfoley", "gan_training_state"
    label: str  # what the file is, as a phrase
    how: str  # where it loads (PATH stands for the file as a Python string, PATH_JSON as a JSON one)
    pickled_how: str = ""  # where a PyTorch pickle (torch.save) of it loads, when not where `how` says

    def advice(self, path: object) -> str:
        """`how` for this file (`pickled_how` where the kind has one and the file is a PyTorch pickle)."""
        how = self.pickled_how if self.pickled_how and is_torch_pickle(path) else self.how
        return how.replace("PATH_JSON", json.dumps(str(path))).replace("PATH", repr(str(path)))


def is_torch_pickle(path: object) -> bool:
    """torch.save's zip archive (it holds a data.pkl), or a bare pickle (0x80, protocol 2 to 5);
    False for anything else, and for a path that cannot be read."""
    try:
        with open(str(path), "rb") as f:
            head = f.read(2)
        if head == b"PK":
            with zipfile.ZipFile(str(path)) as z:
                return any(n.endswith("data.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


_KINDS = {
    "controlfoley": Kind(
        "controlfoley", "a controlfoley model checkpoint",
        "load it with controlfoley.from_pretrained(PATH) (one part of it: controlfoley.checkpoint.load_parts(model, PATH, ['tokenizer']); "
        "a tokenizer run for extraction: controlfoley extract --tokenizer PATH)",
        # a torch.save'd state dict holds no config: from_pretrained cannot read it, the model it came from can
        "it holds the weights without the config a controlfoley checkpoint carries; convert it once: "
        "m = controlfoley.build_model(PRESET) (the preset and overrides it was built with); "
        "m.load_state_dict(torch.load(PATH, weights_only=True)); m.save('model.safetensors'); "
        "then controlfoley.from_pretrained('model.safetensors') loads it",
    ),  # fmt: skip
    "specvqgan": Kind(
        "specvqgan", "an official SpecVQGAN codebook (the tokenizer)",
        "build_model(..., mel='specvqgan', tokenizer={'checkpoint': PATH}) or SpecVQGAN.from_official(PATH); "
        "on the command line --model 'mel=\"specvqgan\"' --model 'tokenizer={\"checkpoint\": PATH_JSON}'",
    ),  # fmt: skip
    "hifigan": Kind("hifigan", "a HiFi-GAN generator (a vocoder)", "build_model(..., vocoder={'name': 'hifigan', 'checkpoint': PATH})"),
    "melgan": Kind("melgan", "a MelGAN generator (a vocoder)", "build_model(..., vocoder={'name': 'melgan', 'checkpoint': PATH})"),
    "bigvgan": Kind(
        "bigvgan", "a BigVGAN generator (a vocoder)",
        "build_model(..., vocoder={'name': 'bigvgan', 'folder': <the folder holding it and its config.json>})",
    ),  # fmt: skip
    "gan_training_state": Kind(
        "gan_training_state", "a GAN vocoder's discriminator and optimizer state (HiFi-GAN / BigVGAN's do_<step> file, e.g. do_02500000), not its generator",
        "give the generator file saved beside it instead (g_<step>, e.g. g_02500000; BigVGAN: bigvgan_generator.pt)",
    ),  # fmt: skip
}

_CONTROLFOLEY_PARTS = ("backbone.", "tokenizer.", "controlnet.", "aligner.", "control_encoder.", "mel.", "vocoder.")


def strip_prefix(sd: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Drop `prefix` (a DistributedDataParallel wrapper's `module.`) when every key has it."""
    keys = list(sd)
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return dict(sd)


def identify(keys: Iterable[str]) -> Kind | None:
    """The kind of weights file whose state dict has these keys (a `module.` prefix ignored), or None."""
    ks = [k[len("module.") :] if k.startswith("module.") else k for k in keys]
    if not ks:
        return None
    s = set(ks)
    if any(k.startswith(("backbone.", "controlnet.")) for k in ks) or sum(any(k.startswith(p) for k in ks) for p in _CONTROLFOLEY_PARTS) >= 2:
        return _KINDS["controlfoley"]
    if "quantize.embedding.weight" in s and any(k.startswith("encoder.conv_in.") for k in ks):
        return _KINDS["specvqgan"]
    if any(".activations." in k or k.startswith("activation_post.") for k in ks):
        return _KINDS["bigvgan"]
    if any(k.startswith("conv_pre.") for k in ks) and any(k.startswith("resblocks.") for k in ks):
        return _KINDS["hifigan"]
    if all(k.startswith("model.") for k in ks) and any(k.endswith((".weight_v", ".parametrizations.weight.original1")) for k in ks):
        return _KINDS["melgan"]
    return None


def identify_container(obj: Any) -> Kind | None:
    """The kind of a loaded checkpoint object: a GAN training-state dict by its top-level keys
    (mpd / msd / mrd, optim_g / optim_d), else a state dict (plain, or under state_dict / generator / model)."""
    if not isinstance(obj, Mapping):
        return None
    top = {str(k) for k in obj}
    if top & {"mpd", "msd", "mrd"} or {"optim_g", "optim_d"} <= top:
        return _KINDS["gan_training_state"]
    for wrapper in ("state_dict", "generator", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and inner:
            return identify(map(str, inner))
    return identify(top) if top and all(isinstance(v, Tensor) for v in obj.values()) else None


def mismatch_advice(keys: Iterable[str], expected: str, path: str) -> str | None:
    """'PATH is X, not Y: load it with ...' when `keys` are another kind of file than `expected` (a Kind.key), else None."""
    kind = identify(keys)
    if kind is None or kind.key == expected:
        return None
    return f"{path} is {kind.label}, not {_KINDS[expected].label if expected in _KINDS else 'a ' + expected}: {kind.advice(path)}"


_PARAM_NAMES = {".parametrizations.weight.original0": ".weight_g", ".parametrizations.weight.original1": ".weight_v"}


def adapt_names(sd: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`sd` renamed to the naming of `own` (the module's state dict) where it is the same layout
    named another way: a `module.` prefix dropped; weight-norm parameters as torch's classic
    `weight_g` / `weight_v` or the newer `parametrizations.weight.original0/1`, whichever the module
    uses; and a plain `X.weight` (weight norm removed before saving) split back into g = ||w|| over
    dim 0 and v = w, which gives the same effective weight. Keys it cannot place are left as they are."""
    out = strip_prefix(sd)
    own_keys = set(own)
    renamed: dict[str, Tensor] = {}
    for key, value in out.items():
        for new, classic in _PARAM_NAMES.items():
            if key.endswith(new) and key not in own_keys and key[: -len(new)] + classic in own_keys:
                key = key[: -len(new)] + classic
            elif key.endswith(classic) and key not in own_keys and key[: -len(classic)] + new in own_keys:
                key = key[: -len(classic)] + new
        renamed[key] = value
    out = renamed
    for key in [k for k in out if k.endswith(".weight") and k not in own_keys]:
        base = key[: -len(".weight")]
        for g_name, v_name in ((".weight_g", ".weight_v"), (".parametrizations.weight.original0", ".parametrizations.weight.original1")):
            g_key, v_key = base + g_name, base + v_name
            if g_key in own_keys and v_key in own_keys and g_key not in out and v_key not in out:
                w = out.pop(key)
                g = w.detach().flatten(1).to(torch.float32).norm(dim=1).to(w.dtype).view(own[g_key].shape)
                out[g_key], out[v_key] = g, w
                break
    return out


# tensor names of layers (the last part of a key), beside the model's own: a file's key ending in one
# of them, under a module the model has, is a layer the model was built without (snake's alpha / beta too)
_LAYER_TENSOR_NAMES = frozenset(
    {"weight", "bias", "weight_g", "weight_v", "original0", "original1", "running_mean", "running_var", "num_batches_tracked", "alpha", "beta"}
)


def layers_beyond(unexpected: list[str], own: Mapping[str, Any]) -> list[str]:
    """The unexpected keys that are layers of a bigger build of the same network, which no dropping
    of keys fixes: under a top-level module the model has, named as a layer's tensor
    (`decoder.up.4.attn.0.k.bias` where the model has `decoder` but no attention there;
    `resblocks.0.convs1.2.weight_v` for a third dilation). Others (`model_ema.decay`,
    `conv_post.extra`, an optimizer's state) are state saved beside the weights."""
    tops = {k.split(".", 1)[0] for k in own if "." in k}
    names = _LAYER_TENSOR_NAMES | {k.rsplit(".", 1)[-1] for k in own}
    return [k for k in unexpected if "." in k and k.split(".", 1)[0] in tops and k.rsplit(".", 1)[-1] in names]
