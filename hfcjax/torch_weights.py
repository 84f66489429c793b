"""PyTorch weights into hfcjax's linen models, for the robust models users bring.

    module, variables = torch_weights.load("model.pt", "wrn")          # a file saved by torch.save
    module, variables = torch_weights.convert(model.state_dict(), "resnet18")

Architectures (`ARCHS`), with the PyTorch names they read:

* ``resnet18``, ``resnet50``: torchvision's ResNet (``conv1``/``bn1``, ``layerS.B.convK``,
  ``downsample.0/1``, ``fc``; 7x7 stem + max-pool) and the CIFAR form of RobustBench /
  pytorch-cifar (3x3 stem, ``shortcut.0/1``, ``linear``); the stem's kernel size decides.
* ``preact_resnet18``: RobustBench's PreActResNet-18 (``layerS.B.bn1/conv1/bn2/conv2``,
  ``shortcut.0``, optional ``bn`` before ``linear``). Its blocks project either the raw input
  (RobustBench's default, ``out_shortcut=False``) or relu(bn1(x)) (pytorch-cifar,
  ``out_shortcut=True``): the state_dict cannot tell, so say it with `shortcut_from_input`.
* ``wrn`` (alias ``wrn28_10``): RobustBench's WideResNet (``blockS.layer.B.bn1/conv1/bn2/conv2/
  convShortcut``, ``bn1``, ``fc``) of any depth and width, read off the tensors.
* ``dm_wrn``: DeepMind's WideResNet (RobustBench's ``DMWideResNet``: ``init_conv``,
  ``layer.G.block.B.batchnorm_0/conv_0/batchnorm_1/conv_1/shortcut``, ``batchnorm``, ``logits``,
  and the ``mean``/``std`` buffers, which stay inside the model) of any depth and width, and
  ``dm_preact_resnet18`` / ``dm_preact_resnet34`` (``DMPreActResNet``: ``conv_2d``,
  ``layer_S.B.batchnorm_0/conv_2d_1/batchnorm_1/conv_2d_2/shortcut``). Their activation
  (``activation="relu"|"swish"``) and input padding (``padding``) are not in the state_dict:
  say them, or take them from `hfcjax.robustbench`'s table.

The module returned takes pixels in [0, 1], NHWC, like every hfcjax model, and pads like
PyTorch (``symmetric_padding``); the torch model's own normalisation is the caller's
`external.Preprocess` (mean/std), declared where the model is evaluated. Every tensor of the
state_dict is used exactly once and every parameter is filled, or one ValueError line names
what is missing, left over or misshapen. BatchNorm epsilon is PyTorch's default, 1e-5. Only
reading a file needs torch (``pip install 'hfcjax[torch]'``); `convert` takes numpy arrays too.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterator, Mapping, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from hfcjax import dm_models, models
from hfcjax.errors import UserError

ARCHS = ("resnet18", "resnet50", "preact_resnet18", "wrn", "wrn28_10", "dm_wrn", "dm_preact_resnet18",
         "dm_preact_resnet34")
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net")
_PREFIXES = ("module.", "model.", "net.")
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")

# (flax path, torch prefix, kind): kind conv / bn / dense says how the tensors map.
Layer = Tuple[str, str, str]


def load(path, arch: str, **options) -> Tuple[Any, Dict]:
    """(module, variables) from a file written by ``torch.save(model.state_dict(), path)``
    (also a dict holding it under state_dict/model_state_dict/model/net). Read with
    ``weights_only=True``: nothing in the file is executed."""
    try:
        import torch
    except ImportError:
        raise UserError("reading a PyTorch file needs torch: pip install 'hfcjax[torch]' (or convert a state_dict "
                         "of numpy arrays with torch_weights.convert).") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (point at the .pt/.pth file your model was saved to).") from None
    except Exception as e:  # noqa: BLE001 - whatever torch raises for a file it cannot read
        text = str(e)
        if "weights only load failed" in text.lower():  # torch's advice (weights_only=False) is not ours to give
            detail = [line.strip() for line in text.split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
            if "global" in (detail[0].lower() if detail else ""):  # a class torch may not build without running code
                raise UserError(f"{path} holds pickled Python objects besides tensors (a whole model, or custom "
                                "classes); hfcjax reads only a state_dict, without executing anything: save it with "
                                "torch.save(model.state_dict(), path).") from None
            text = detail[0] if detail else "not a PyTorch file"
        first = (text.strip().splitlines() or [""])[0][:200]
        raise UserError(f"{path}: torch.load cannot read it ({type(e).__name__}: {first}); save the weights with "
                        "torch.save(model.state_dict(), path), not the pickled model.") from None
    return convert(state, arch, **options)


def convert(state_dict: Mapping[str, Any], arch: str, *, shortcut_from_input: bool = True, activation: str = "relu",
            padding: int = 0) -> Tuple[Any, Dict]:
    """(module, variables) equal to the PyTorch model of `arch` with these weights.
    `shortcut_from_input` only concerns ``preact_resnet18``; `activation` and `padding` the
    DeepMind networks (see the module docstring)."""
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; choose one of {list(ARCHS)}.")
    if activation not in dm_models.ACTIVATIONS:
        raise UserError(f"unknown activation {activation!r}; choose one of {list(dm_models.ACTIVATIONS)}.")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise UserError(f"padding must be an integer >= 0 (pixels added on every side), got {padding!r}.")
    state = _arrays(_unwrap(state_dict))
    options = {"shortcut_from_input": shortcut_from_input, "activation": activation, "padding": padding}
    try:
        module, variables = _build(state, arch, options)
    except ValueError as e:
        fits = [a for a in _LAYOUTS if a != arch and _fits(state, a)]
        raise UserError(f"{e}{f' (it converts as --arch {fits[0]})' if fits else ''}") from None
    return module, jax.tree.map(jnp.asarray, variables)


def _build(state, arch, options):
    module, layers = _LAYOUTS["wrn" if arch == "wrn28_10" else arch](state, options)
    channels = _get(state, f"{layers[0][1]}.weight").shape[1]
    expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, channels)))
    variables, used = _fill(state, layers)
    buffers = set(_NORMALISATION) & set(state) if arch.startswith("dm_") else set()  # inside the DeepMind model
    _check(arch, state, used | buffers, expected, variables)
    return module, variables


def _fits(state, arch) -> bool:
    try:
        _build(state, arch, {"shortcut_from_input": True, "activation": "relu", "padding": 0})
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- architectures


def _resnet(state, blocks, convs):
    imagenet = _get(state, "conv1.weight").shape[-1] == 7
    num_classes = _get(state, _either(state, "fc.weight", "linear.weight")).shape[0]
    module = models.create_model("resnet18" if convs == 2 else "resnet50", num_classes, batch_norm=True,
                                 imagenet_stem=imagenet, symmetric_padding=True)
    layers = [("stem", "conv1", "conv"), ("stem_bn", "bn1", "bn")]
    for s, n in enumerate(blocks):
        for b in range(n):
            flax_block, torch_block = f"stage{s + 1}_block{b + 1}", f"layer{s + 1}.{b}"
            for k in range(convs):
                layers += [(f"{flax_block}/Conv_{k}", f"{torch_block}.conv{k + 1}", "conv"),
                           (f"{flax_block}/BatchNorm_{k}", f"{torch_block}.bn{k + 1}", "bn")]
            short = _either(state, f"{torch_block}.downsample.0.weight", f"{torch_block}.shortcut.0.weight",
                            required=False)
            if short:
                base = short[:-len(".0.weight")]
                layers += [(f"{flax_block}/shortcut", f"{base}.0", "conv"), (f"{flax_block}/shortcut_bn", f"{base}.1", "bn")]
    layers.append(("logits", _either(state, "fc.weight", "linear.weight")[:-len(".weight")], "dense"))
    return module, layers


def _preact(state, shortcut_from_input, *, stage, block_prefix, shortcut, final, logits):
    """Pre-activation ResNets and WideResNets: depth and widths read off the tensors."""
    stages = sorted({int(m.group(1)) for k in state if (m := re.match(rf"{stage}(\d+)\.", k))})
    if not stages:
        raise UserError(f"the state_dict has no {stage}N.* tensors: is it a {stage.rstrip('.')}-style network?")
    layers, widths, n = [("stem", "conv1", "conv")], [], 0
    for i, s in enumerate(stages):
        count = len({int(m.group(1)) for k in state if (m := re.match(rf"{stage}{s}\.{block_prefix}(\d+)\.", k))})
        n = n or count
        if count != n:
            raise UserError(f"stage {s} has {count} blocks but stage {stages[0]} has {n}; hfcjax's pre-activation "
                             "ResNet needs the same number in every stage.")
        widths.append(_get(state, f"{stage}{s}.{block_prefix}0.conv1.weight").shape[0])
        for b in range(n):
            flax_block, torch_block = f"stage{i + 1}_block{b + 1}", f"{stage}{s}.{block_prefix}{b}"
            layers += [(f"{flax_block}/BatchNorm_0", f"{torch_block}.bn1", "bn"),
                       (f"{flax_block}/Conv_0", f"{torch_block}.conv1", "conv"),
                       (f"{flax_block}/BatchNorm_1", f"{torch_block}.bn2", "bn"),
                       (f"{flax_block}/Conv_1", f"{torch_block}.conv2", "conv")]
            if f"{torch_block}.{shortcut}.weight" in state:
                layers.append((f"{flax_block}/shortcut", f"{torch_block}.{shortcut}", "conv"))
    final_norm = f"{final}.weight" in state
    if final_norm:
        layers.append(("final_bn", final, "bn"))
    layers.append(("logits", logits, "dense"))
    module = models.PreActResNet(
        num_classes=_get(state, f"{logits}.weight").shape[0], n=n, widths=tuple(widths),
        stem_features=_get(state, "conv1.weight").shape[0], final_norm=final_norm,
        shortcut_from_input=shortcut_from_input, symmetric_padding=True)
    return module, layers


_NORMALISATION = ("mean", "std")  # DeepMind's buffers, [C, 1, 1]


def _dm(state, options, *, wide):
    """DeepMind's WideResNet (`wide`) or PreActResNet: blocks read off the tensors."""
    group, block = ("layer.{}.block.", "{}.") if wide else ("layer_{}.", "{}.")
    stem, names = ("init_conv", ("batchnorm_0", "conv_0", "batchnorm_1", "conv_1")) if wide else (
        "conv_2d", ("batchnorm_0", "conv_2d_1", "batchnorm_1", "conv_2d_2"))
    counts, layers = [], [(stem, stem, "conv")]
    for g in range(3 if wide else 4):
        prefix = group.format(g)
        n = len({int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})
        counts.append(n)
        for b in range(n):
            torch_block, flax_block = prefix + block.format(b), f"layer_{g}_block_{b}"
            layers += [(f"{flax_block}/{name}", torch_block + name, "bn" if name.startswith("batchnorm") else "conv")
                       for name in names]
            if torch_block + "shortcut.weight" in state:
                layers.append((f"{flax_block}/shortcut", torch_block + "shortcut", "conv"))
    if not counts[0] or len(set(counts)) != 1 and wide:
        raise UserError(f"the state_dict's block groups hold {counts} blocks: not a DeepMind "
                        f"{'WideResNet' if wide else 'PreActResNet'}.")
    layers += [("batchnorm", "batchnorm", "bn"), ("logits", "logits", "dense")]
    channels = _get(state, f"{stem}.weight").shape[1]
    mean = tuple(np.ravel(state.get("mean", np.zeros(channels))).tolist())
    std = tuple(np.ravel(state.get("std", np.ones(channels))).tolist())
    common = dict(num_classes=_get(state, "logits.weight").shape[0], activation=options["activation"], mean=mean,
                  std=std, padding=options["padding"])
    if wide:
        width = _get(state, "layer.0.block.0.conv_0.weight").shape[0] // 16
        return dm_models.DMWideResNet(depth=6 * counts[0] + 4, width=width, **common), layers
    return dm_models.DMPreActResNet(blocks=tuple(counts), **common), layers


def _dm_preact(state, options, blocks):
    module, layers = _dm(state, options, wide=False)
    if tuple(module.blocks) != blocks:
        raise UserError(f"the state_dict has {tuple(module.blocks)} blocks per stage, not {blocks}: is the "
                        "architecture right?")
    return module, layers


_LAYOUTS = {
    "resnet18": lambda state, _: _resnet(state, (2, 2, 2, 2), 2),
    "resnet50": lambda state, _: _resnet(state, (3, 4, 6, 3), 3),
    "preact_resnet18": lambda state, options: _preact(state, options["shortcut_from_input"], stage="layer",
                                                      block_prefix="", shortcut="shortcut.0", final="bn",
                                                      logits="linear"),
    # RobustBench's WideResNet projects relu(bn1(x)) in its widening blocks.
    "wrn": lambda state, _: _preact(state, False, stage="block", block_prefix="layer.", shortcut="convShortcut",
                                    final="bn1", logits="fc"),
    "dm_wrn": lambda state, options: _dm(state, options, wide=True),
    "dm_preact_resnet18": lambda state, options: _dm_preact(state, options, (2, 2, 2, 2)),
    "dm_preact_resnet34": lambda state, options: _dm_preact(state, options, (3, 4, 6, 3)),
}


# --------------------------------------------------------------------------- tensors


def _unwrap(obj) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise UserError(f"expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}; save "
                         "model.state_dict(), not the model.")
    for key in _WRAPPERS:
        if key in obj and isinstance(obj[key], Mapping):
            return _unwrap(obj[key])
    for prefix in _PREFIXES:  # nn.DataParallel and wrapper modules
        if obj and all(k.startswith(prefix) for k in obj):
            return _unwrap({k[len(prefix):]: v for k, v in obj.items()})
    return obj


def _arrays(state: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        if _IGNORED.search(key):
            continue
        if hasattr(value, "detach"):  # a torch tensor, in any dtype or device
            value = value.detach().cpu().float().numpy()
        out[key] = np.asarray(value, np.float32)
    return out


def _get(state, key):
    if key not in state:
        raise UserError(f"the state_dict has no tensor {key!r}: is the architecture right?")
    return state[key]


def _either(state, *keys, required=True):
    for key in keys:
        if key in state:
            return key
    if required:
        raise UserError(f"the state_dict has none of {list(keys)}: is the architecture right?")
    return None


def _tensors(state, prefix, kind) -> Iterator[Tuple[str, str, np.ndarray]]:
    """(collection, flax leaf path suffix, array) for one layer."""
    if kind == "conv":
        yield "params", "kernel", np.transpose(_get(state, f"{prefix}.weight"), (2, 3, 1, 0))
        if f"{prefix}.bias" in state:
            yield "params", "bias", state[f"{prefix}.bias"]
    elif kind == "dense":
        yield "params", "kernel", _get(state, f"{prefix}.weight").T
        yield "params", "bias", _get(state, f"{prefix}.bias")
    else:
        for collection, leaf, name in (("params", "scale", "weight"), ("params", "bias", "bias"),
                                       ("batch_stats", "mean", "running_mean"), ("batch_stats", "var", "running_var")):
            yield collection, leaf, _get(state, f"{prefix}.{name}")


def _torch_key(prefix, leaf):
    names = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    return f"{prefix}.{names[leaf]}"


def _fill(state, layers):
    flat, used = {}, set()
    for flax_path, prefix, kind in layers:
        for collection, leaf, array in _tensors(state, prefix, kind):
            flat[(collection, *flax_path.split("/"), leaf)] = array
            used.add(_torch_key(prefix, leaf))
    return flax.traverse_util.unflatten_dict(flat), used


def _check(arch, state, used, expected, variables):
    left = sorted(set(state) - used)
    if left:
        raise UserError(f"{len(left)} tensors of the state_dict have no place in {arch}: {left[:5]}"
                         f"{' ...' if len(left) > 5 else ''} (normalisation buffers go to --mean/--std instead).")
    want = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected))
    got = flax.traverse_util.flatten_dict(variables)
    for keys, what in ((set(want) - set(got), "no tensor for"), (set(got) - set(want), "no parameter for")):
        names = sorted("/".join(k) for k in keys)
        if names:
            raise UserError(f"{arch}: {what} {names[:5]}{' ...' if len(names) > 5 else ''}: is the architecture "
                             "right?")
    for key, spec in want.items():
        if tuple(got[key].shape) != tuple(spec.shape):
            raise UserError(f"{arch}: {'/'.join(key)} needs shape {tuple(spec.shape)}, the state_dict gives "
                             f"{tuple(got[key].shape)}: is the architecture right?")
