"""``dpp.oneshot(model, method, ...)``: one-shot k-of-n pruning of a whole model.

One call prunes every selected layer of a (pretrained) model with ``"magnitude"``
(``|W|``), ``"wanda"`` (``|W_ij| * ||X_:,j||_2``) or ``"sparsegpt"`` (OBS selection with the
weight update), in place, and returns a :class:`OneShotResult` with the masks, graded
scores, and mask-source factories for :func:`dpp.prune`: the one-shot mask fixed (the
``+ft`` baselines) or as the start of DPP's learned logits.

**Sequential calibration** (``sequential=True``, the default for Wanda and SparseGPT), as in
the reference implementations of both papers: the model's stack of blocks is found (the
``nn.ModuleList`` or ``nn.Sequential`` holding most selected layers: ``model.model.layers`` of
a Hugging Face Llama, ``transformer.h`` of GPT-2). A forward pre-hook on the first block
stores its inputs (hidden states and keyword arguments: attention mask, position
embeddings) for every calibration batch and stops the forward there. Then, block by block:
one pass of the block over the cached inputs gathers each selected layer's input statistics,
the block's layers are pruned, and a second pass of the (pruned) block gives the next
block's inputs. Every layer is thus calibrated on the outputs of the already pruned layers
before it, for about the cost of one forward pass of the calibration data. With
``true_sequential=True`` the layers of a block are pruned in groups that share one input,
in forward order (q/k/v, then o, then gate/up, then down in a Llama block), each group's
inputs taken after the groups before it were pruned (one more block pass per group).
Layers outside the stack are calibrated with a full-model pass: those called before the
first block before the stack is processed, the others after it.

Every block is called with the keyword arguments the first block received, as in the
reference code; a Hugging Face model whose blocks take different attention masks
(``config.layer_types`` of more than one kind, e.g. sliding-window layers) is refused with
``sequential=True``. ``sequential=False`` takes every layer's inputs from one pass of the
dense model instead.

Example:
    >>> import torch, dpp
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 4))
    >>> result = dpp.oneshot(model, "wanda", k=2, block_size=4,
    ...                      calibration_data=[torch.randn(32, 16)])
    >>> result.masks["0"].reshape(8, 4, 4).sum(-1).unique().tolist()  # 2 of every 4
    [2]
    >>> bool((model[0].weight[~result.masks["0"]] == 0).all())  # pruned in place
    True
    >>> pruner = dpp.prune(model, **result.prune_options(), mask_source=result.fixed_masks())
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .config import DPPConfig
from .granularity import GroupLayout
from .layers import canonical_weight, is_dpp_layer, is_hf_conv1d
from .masks import DPPMask, FixedMask, MaskSource, topk_mask
from .priors import (
    InputStats,
    calibrate,
    feed_batch,
    graded_scores,
    sparsegpt_prune,
    wanda_scores,
    watch_inputs,
)
from .pruner import _check_untied, select_layers

__all__ = ["ONESHOT_METHODS", "OneShotResult", "oneshot"]

#: The one-shot methods of :func:`oneshot`.
ONESHOT_METHODS = ("magnitude", "wanda", "sparsegpt")

MaskSourceFactory = Callable[[str, nn.Module, GroupLayout], MaskSource]


@dataclass
class OneShotResult:
    """What :func:`oneshot` decided, per pruned layer.

    Attributes:
        method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
        masks: ``{layer name: bool tensor shaped like its weight}``, exactly k kept in every
            group (N:M block or whole row).
        scores: ``{layer name: float32 tensor shaped like its weight}``, higher: keep.
            ``|W|`` (magnitude), ``|W_ij| * ||X_:,j||_2`` (Wanda, with the inputs it was
            calibrated on), or SparseGPT's OBS saliency ``W_ij^2 / [H^-1]_jj`` at the moment
            each group was decided; within every group each kept weight scores strictly
            above each pruned one (a pruned score is lowered to just below the group's
            smallest kept score where needed).
        layouts: ``{layer name: GroupLayout}`` of the groups (granularity ``"block"`` for
            N:M, ``"weight"`` for k of a whole row).
        blocks: the name of the stack of blocks that sequential calibration walked
            (``"model.layers"``), or ``None``.
    """

    method: str
    masks: dict[str, Tensor]
    scores: dict[str, Tensor]
    layouts: dict[str, GroupLayout]
    blocks: str | None = None
    _transposed: set[str] = field(default_factory=set, repr=False)

    def _grouped(self, name: str, tensor: Tensor) -> Tensor:
        """``[num_groups, n]`` view of a weight-shaped tensor of layer ``name``."""
        lay = self.layouts[name]
        t = tensor.t() if name in self._transposed else tensor
        return t.reshape(lay.num_groups, lay.n)

    def _check_layer(self, name: str, layout: GroupLayout) -> GroupLayout:
        ours = self.layouts.get(name)
        if ours is None:
            listed = ", ".join(list(self.layouts)[:10]) + (
                ", ..." if len(self.layouts) > 10 else ""
            )
            raise ValueError(
                f"layer {name!r} was not pruned by dpp.oneshot ({listed}); select the same "
                "layers in dpp.prune: dpp.prune(model, **result.prune_options(), mask_source=...)"
            )
        same = (ours.granularity, ours.num_groups, ours.n, ours.k) == (
            layout.granularity,
            layout.num_groups,
            layout.n,
            layout.k,
        )
        if not same:
            raise ValueError(
                f"layer {name!r}: dpp.prune asks for {layout.granularity} groups keeping "
                f"{layout.k} of {layout.n}, but the one-shot masks keep {ours.k} of {ours.n} "
                f"({ours.granularity}); use dpp.prune(model, **result.prune_options(), ...)"
            )
        return ours

    def prune_options(self) -> dict[str, Any]:
        """:func:`dpp.prune` options selecting exactly these layers with these groups:
        ``granularity``, ``block_size``, ``k`` and ``include`` (the layer names)."""
        lay = next(iter(self.layouts.values()))
        ks = {la.k for la in self.layouts.values()}
        options: dict[str, Any] = {"granularity": lay.granularity, "k": min(ks)}
        if lay.granularity == "block":
            options["block_size"] = lay.block_size
        if len(ks) > 1:  # density= gave layers of different fan-in different k
            options["overrides"] = {n: {"k": la.k} for n, la in self.layouts.items()}
        options["include"] = list(self.layouts)
        return options

    def fixed_masks(self) -> MaskSourceFactory:
        """A ``mask_source`` factory for :func:`dpp.prune`: a :class:`~dpp.FixedMask` per layer
        holding the one-shot mask (weights fine-tuned under a fixed mask: the ``+ft``
        baselines).

        Example:
            ``dpp.prune(model, **result.prune_options(), mask_source=result.fixed_masks())``
        """

        def source(name: str, module: nn.Module, layout: GroupLayout) -> MaskSource:
            self._check_layer(name, layout)
            return FixedMask(layout, self._grouped(name, self.masks[name]))

        return source

    def initial_logits(self, name: str, logit_std: float = 3.0, graded: bool = True) -> Tensor:
        """``[num_groups, n]`` DPP logits of layer ``name`` whose top-k is its one-shot mask.

        ``graded=True``: the score (``log`` of SparseGPT's saliency, which spans orders of
        magnitude; ``|W|`` or Wanda's score as they are, like ``dpp.prune``'s
        ``logit_init``), z-scored per group and multiplied by ``logit_std``: the start also
        says how clear each choice was. ``graded=False``: the 0/1 mask z-scored per group
        times ``logit_std`` (every kept weight equally likely). Either way every kept logit
        is above every pruned one of its group (by at least ``1e-3``), so the deterministic
        mask of the start is exactly the one-shot mask.
        """
        _check_std(logit_std)
        keep = self._grouped(name, self.masks[name])
        lay = self.layouts[name]
        if lay.n == 1:
            return torch.zeros(keep.shape)
        if graded:
            raw = self._grouped(name, self.scores[name]).detach().double()
            s = graded_scores(raw, keep, log=self.method == "sparsegpt").double()
        else:
            s = keep.double()
        z = (s - s.mean(-1, keepdim=True)) / s.std(-1, keepdim=True).clamp_min(1e-12)
        z = (z * logit_std).float()
        kept_min = z.masked_fill(~keep, float("inf")).amin(-1, keepdim=True)
        return torch.where(keep, z, torch.minimum(z, kept_min - 1e-3)).cpu()

    def learned_masks(self, logit_std: float = 3.0, graded: bool = True) -> MaskSourceFactory:
        """A ``mask_source`` factory for :func:`dpp.prune`: a :class:`~dpp.DPPMask` per layer
        whose logits start at :meth:`initial_logits` (DPP from the one-shot prior; its
        deterministic mask before training is exactly :attr:`masks`).

        Args:
            logit_std: the prior strength (logits' spread per group).
            graded: start from the graded scores (``True``) or from the 0/1 mask.

        Example:
            ``dpp.prune(model, **result.prune_options(), mask_source=result.learned_masks())``
        """
        _check_std(logit_std)

        def source(name: str, module: nn.Module, layout: GroupLayout) -> MaskSource:
            self._check_layer(name, layout)
            return DPPMask(
                layout,
                init_logits=self.initial_logits(name, logit_std, graded),
                device=module.weight.device,
            )

        return source


def _check_std(logit_std: float) -> None:
    if not logit_std > 0:
        raise ValueError(
            f"logit_std must be > 0 (the prior strength; 3.0 is a good start), got "
            f"{logit_std}: at 0 every candidate ties and the start is not the one-shot mask"
        )


class _Captured(Exception):
    """Raised by the pre-hook of the first block once it has stored the block's inputs."""


@dataclass
class _Call:
    """One calibration batch's call of a block: arguments with the hidden states apart."""

    args: tuple
    kwargs: dict[str, Any]
    key: int | str  # where the hidden states go: a position in args or a kwarg name
    hidden: Tensor
    dtype: torch.dtype
    device: torch.device

    def run(self, block: nn.Module) -> Any:
        h = self.hidden.to(device=self.device, dtype=self.dtype)
        if isinstance(self.key, int):
            return block(*self.args[: self.key], h, *self.args[self.key + 1 :], **self.kwargs)
        return block(*self.args, **{**self.kwargs, self.key: h})


def _store(t: Tensor, dtype: torch.dtype | None, device: torch.device | str | None) -> Tensor:
    t = t.detach()
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.to(device) if device is not None else t


def _hidden_of(out: Any, where: str) -> Tensor:
    """The hidden states a block returns: a tensor, or the first item of a tuple."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    hidden = getattr(out, "last_hidden_state", None)
    if isinstance(hidden, Tensor):
        return hidden
    raise TypeError(
        f"block {where} returned {type(out).__name__}, not hidden states (a tensor or a tuple "
        "starting with one); dpp.oneshot(sequential=True) cannot chain it: use sequential=False"
    )


def _matrix(module: nn.Module) -> Tensor:
    w = canonical_weight(module).detach()
    return w.reshape(w.shape[0], -1)


def _as_weight(module: nn.Module, matrix: Tensor) -> Tensor:
    """Inverse of :func:`_matrix`: ``[out, in]`` back to the module's own weight layout."""
    t = matrix.reshape(canonical_weight(module).shape)
    return t.t() if is_hf_conv1d(type(module)) else t


def _find_stack(
    model: nn.Module, names: Sequence[str]
) -> tuple[str, list[tuple[str, nn.Module]]] | None:
    """``(name, [(block name, block)])`` of the ``nn.ModuleList``/``nn.Sequential`` holding
    most selected layers (ties: more blocks holding layers, then the outermost)."""
    best: tuple[int, int] | None = None
    found = None
    for cname, container in model.named_modules():
        if not isinstance(container, (nn.ModuleList, nn.Sequential)) or is_dpp_layer(container):
            continue
        blocks = [(f"{cname}.{i}" if cname else str(i), m) for i, m in enumerate(container)]
        holding = [sum(1 for n in names if n == b or n.startswith(b + ".")) for b, _ in blocks]
        key = (sum(holding), sum(1 for h in holding if h))
        if key[0] and (best is None or key > best):
            best, found = key, (cname, blocks)
    return found


def _use_cache_off(model: nn.Module, batch: Any) -> dict[str, Any]:
    """``{"use_cache": False}`` when the model's forward takes it (transformers' models)."""
    if isinstance(batch, dict) and "use_cache" in batch:
        return {}
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def _check_block_kwargs_shared(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    kinds = getattr(config, "layer_types", None)
    if isinstance(kinds, (list, tuple)) and len(set(kinds)) > 1:
        raise ValueError(
            f"{type(model).__name__} has blocks of different kinds (config.layer_types: "
            f"{sorted(set(kinds))}) that take different attention masks, but "
            "dpp.oneshot(sequential=True) calls every block with the first block's keyword "
            "arguments; use sequential=False (every layer calibrated on the dense model)"
        )


class _Pruning:
    """The state of one :func:`oneshot` call: which layers, their decisions, what to restore."""

    def __init__(
        self,
        method: str,
        layers: dict[str, nn.Module],
        layouts: dict[str, GroupLayout],
        *,
        update_weights: bool,
        dampening: float,
        keep_pruned_weights: bool,
    ) -> None:
        self.method = method
        self.layers = layers
        self.layouts = layouts
        self.update_weights = update_weights
        self.keep_pruned_weights = keep_pruned_weights
        self.dampening = dampening
        self.masks: dict[str, Tensor] = {}
        self.scores: dict[str, Tensor] = {}
        self.originals: dict[str, Tensor] = {}

    def decide(self, name: str, stats: InputStats | None) -> None:
        """Prune layer ``name`` (from its input statistics) and write its new weight."""
        module = self.layers[name]
        lay = self.layouts[name]
        w = _matrix(module)
        shape = (lay.num_groups, lay.n)
        new_w: Tensor
        if self.method == "sparsegpt":
            if stats is None or stats.hessian is None or stats.tokens == 0:
                raise ValueError(_unreached(name))
            block = lay.block_size if lay.granularity == "block" else None
            keep, new_w, raw = sparsegpt_prune(
                w,
                stats.hessian,
                k=lay.k,
                block_size=block,
                dampening=self.dampening,
                return_saliency=True,
            )
            keep = keep.reshape(shape)
        else:
            if self.method == "wanda":
                if stats is None or stats.sq_norm is None or stats.tokens == 0:
                    raise ValueError(_unreached(name))
                raw = wanda_scores(w, stats.sq_norm)
            else:
                raw = w.abs().float()
            keep = topk_mask(raw.reshape(shape), lay.k) > 0
            new_w = w * keep.reshape(w.shape)
        scores = graded_scores(raw.reshape(shape), keep, log=False)
        self.masks[name] = _as_weight(module, keep.reshape(w.shape))
        self.scores[name] = _as_weight(module, scores.reshape(w.shape))
        with torch.no_grad():
            keeps_some = not self.update_weights or self.keep_pruned_weights
            if keeps_some and name not in self.originals:
                self.originals[name] = module.weight.detach().clone()
            module.weight.copy_(_as_weight(module, new_w.to(module.weight.dtype)))

    def restore(self, names: Iterable[str]) -> None:
        """Put back the original weights of ``names`` (``update_weights=False``), or only
        the pruned ones (``keep_pruned_weights=True``: the kept ones stay updated)."""
        with torch.no_grad():
            for name in names:
                if name not in self.originals:
                    continue
                weight, original = self.layers[name].weight, self.originals.pop(name)
                if self.update_weights:
                    original = torch.where(self.masks[name], weight, original)
                weight.copy_(original)


def _unreached(name: str) -> str:
    return (
        f"no calibration batch reached layer {name!r}: Wanda and SparseGPT need each pruned "
        f"layer's inputs; exclude it (exclude=[{name!r}]) or use method='magnitude'"
    )


def _select(
    model: nn.Module,
    cfg: DPPConfig,
) -> tuple[dict[str, nn.Module], dict[str, GroupLayout]]:
    """The layers ``dpp.prune`` would select with ``cfg`` (the output head dense unless
    included), and their layouts; errors name the pattern or layer."""
    _, _, _, chosen = select_layers(model, cfg)
    selected = dict(chosen)
    _check_untied(model, [(n, m, cfg.settings_for(n)) for n, m in selected.items()])
    layouts = {
        name: GroupLayout.for_weight(
            canonical_weight(module).shape,
            cfg.granularity,
            k=cfg.k,
            density=cfg.density,
            block_size=cfg.block_size,
            is_conv=isinstance(module, nn.modules.conv._ConvNd),
            name=name,
        )
        for name, module in selected.items()
    }
    return selected, layouts


def oneshot(
    model: nn.Module,
    method: str,
    *,
    k: int | None = None,
    density: float | None = None,
    block_size: int | None = None,
    calibration_data: Iterable[Any] | None = None,
    update_weights: bool = True,
    keep_pruned_weights: bool = False,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] = (),
    sequential: bool = True,
    true_sequential: bool = False,
    dampening: float = 0.01,
    cache_dtype: torch.dtype | None = torch.float32,
    cache_device: torch.device | str | None = None,
) -> OneShotResult:
    """Prune ``model`` one-shot, in place: k of every ``block_size`` inputs (N:M) or k of
    every row, by magnitude, Wanda or SparseGPT.

    Afterwards the model is a plain model (no DPP layers): pruned weights are zero (unless
    ``keep_pruned_weights``) and, for SparseGPT with ``update_weights=True``, the kept
    weights carry the OBS update. Feed the result to :func:`dpp.prune` to fine-tune under
    the fixed mask (:meth:`OneShotResult.fixed_masks`) or to learn masks from it
    (:meth:`OneShotResult.learned_masks`).

    Args:
        model: the (dense, pretrained) model; changed in place.
        method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
        k: weights kept per group (or give ``density``).
        density: fraction kept per group, ``k = max(1, round(density * n))``.
        block_size: ``m`` of N:M (k of every m consecutive inputs of a row); ``None``: k of
            every whole row (per output neuron, of its fan-in).
        calibration_data: Wanda and SparseGPT: an iterable of model inputs, each a tensor
            (``model(x)``), a tuple (``model(*x)``) or a dict of keyword arguments
            (``model(**x)``, e.g. ``{"input_ids": ids}``), as ``dpp.prune`` takes them.
            Materialised once (a list); ``use_cache=False`` is passed when the model's
            forward takes it. Not used by magnitude.
        update_weights: SparseGPT: write its OBS-updated weights (``False``: its mask only,
            the weights stay as they were, MaskLLM's prior). Wanda, magnitude: zero the
            pruned weights (``False``: leave them). The masks do not depend on it: with
            ``False`` the pruned (and updated) layers are still what later layers are
            calibrated on, and the weights are restored afterwards.
        keep_pruned_weights: leave the pruned weights at their dense values (the kept ones
            still take SparseGPT's update): a start for DPP from the one-shot model. The
            calibration is the same (every layer is calibrated on the pruned layers before
            it), and ``dpp.prune(model, **result.prune_options(),
            mask_source=result.learned_masks())`` then starts at exactly the one-shot
            model, with the pruned weights there to come back.
        include: glob patterns of module names to prune (as ``dpp.prune``); default: every
            ``nn.Linear``-like layer and convolution except the output head.
        exclude: glob patterns of module names left dense.
        sequential: calibrate each block on the outputs of the already pruned blocks before
            it (see the module docstring); ``False``: every layer's inputs from one pass of
            the dense model.
        true_sequential: within a block, prune the layers group by group in forward order
            (layers sharing one input form a group), each calibrated after the groups
            before it; one more pass of the block per group.
        dampening: SparseGPT's relative dampening ``lambda / mean(diag H)``.
        cache_dtype: dtype in which the cached hidden states of the blocks are kept (a
            floating dtype; cast back to the block's input dtype when fed; ``None``: as
            produced). float32 is exact for float32 and bfloat16 models; bfloat16 halves
            the memory.
        cache_device: where the cached hidden states are kept (``None``: where the model
            produced them, i.e. the model's device; ``"cpu"`` to spare accelerator memory).

    Returns:
        The :class:`OneShotResult` (masks and scores shaped like each layer's weight).

    Raises:
        ValueError/TypeError: an unknown method (naming the valid ones), calibration data
            missing or empty for Wanda/SparseGPT, a ``block_size`` that does not divide a
            layer's fan-in (naming the layer), a pattern that matches no layer, a layer
            that no calibration batch reaches, an already DPP-pruned model. Everything but
            an unreached layer is checked before any weight changes; a layer that no batch
            reaches is found when its block is calibrated, and with ``update_weights=True``
            the blocks before it are then already pruned.

    Example:
        >>> import torch, dpp
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(),
        ...                             torch.nn.Linear(8, 2))
        >>> result = dpp.oneshot(model, "sparsegpt", k=1, block_size=4,
        ...                      calibration_data=[torch.randn(16, 8)])
        >>> result.blocks  # the model itself is the stack: layer "2" sees pruned "0"
        '<model>'
        >>> [int(m.sum()) for m in result.masks.values()]  # 1 of every 4 kept
        [16, 4]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"dpp.oneshot expects a torch.nn.Module, got {type(model).__name__}")
    if method not in ONESHOT_METHODS:
        raise ValueError(f"unknown one-shot method {method!r}; valid: {', '.join(ONESHOT_METHODS)}")
    already = [n for n, m in model.named_modules() if is_dpp_layer(m)]
    if already:
        raise ValueError(
            f"the model has DPP layers ({', '.join(already[:5])}); dpp.oneshot prunes a plain "
            "model: call it before dpp.prune, or finalize() the pruner first"
        )
    if (k is None) == (density is None):
        raise ValueError(
            f"dpp.oneshot needs exactly one of k or density (got k={k}, density={density}), "
            "e.g. k=2, block_size=4 for 2:4"
        )
    batches: list[Any] = []
    if method == "magnitude":
        if calibration_data is not None:
            raise ValueError(
                "calibration_data is used by method='wanda' or 'sparsegpt', not 'magnitude' "
                "(it scores |W| alone); drop calibration_data or change the method"
            )
    else:
        if calibration_data is None:
            raise ValueError(
                f"method={method!r} needs calibration inputs: pass dpp.oneshot(..., "
                "calibration_data=[batch, ...]) with batches the model is called on"
            )
        if isinstance(calibration_data, (Tensor, dict)):
            raise TypeError(
                "calibration_data is an iterable of batches; wrap a single batch in a list: "
                "calibration_data=[batch]"
            )
        batches = list(calibration_data)
        if not batches:
            raise ValueError(
                f"calibration_data is empty: method={method!r} needs at least one batch of "
                "model inputs (e.g. a list of input_ids tensors)"
            )
    cfg = DPPConfig(
        granularity="block" if block_size is not None else "weight",
        k=k,
        density=density,
        block_size=block_size,
        include=[include] if isinstance(include, str) else include,
        exclude=[exclude] if isinstance(exclude, str) else list(exclude),
    )
    layers, layouts = _select(model, cfg)
    state = _Pruning(
        method,
        layers,
        layouts,
        update_weights=update_weights,
        dampening=dampening,
        keep_pruned_weights=keep_pruned_weights,
    )
    transposed = {n for n, m in layers.items() if is_hf_conv1d(type(m))}

    was_training = model.training
    model.eval()
    stack_name = None
    try:
        with torch.no_grad():
            if method == "magnitude":
                for name in layers:
                    state.decide(name, None)
            elif not sequential:
                stats = calibrate(
                    model, layers, batches, hessian=layers if method == "sparsegpt" else ()
                )
                for name in layers:
                    state.decide(name, stats[name])
            else:
                stack_name = _run_sequential(
                    model,
                    state,
                    batches,
                    true_sequential=true_sequential,
                    cache_dtype=cache_dtype,
                    cache_device=cache_device,
                )
    finally:
        state.restore(list(state.originals))
        model.train(was_training)
    return OneShotResult(
        method=method,
        masks={n: state.masks[n] for n in layers},
        scores={n: state.scores[n] for n in layers},
        layouts=layouts,
        blocks=stack_name,
        _transposed=transposed,
    )


def _capture(
    model: nn.Module,
    first: nn.Module,
    where: str,
    batches: list[Any],
    *,
    cache_dtype: torch.dtype | None,
    cache_device: torch.device | str | None,
) -> list[_Call]:
    """The first block's inputs for every batch (the forward stopped there)."""
    calls: list[_Call] = []

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:
            key: int | str = 0
            hidden = args[0]
        elif "hidden_states" in kwargs:
            key, hidden = "hidden_states", kwargs["hidden_states"]
        else:
            raise TypeError(
                f"block {where} was called without positional arguments or hidden_states; "
                "dpp.oneshot(sequential=True) cannot find its input: use sequential=False"
            )
        if not isinstance(hidden, Tensor):
            raise TypeError(
                f"block {where}'s first input is a {type(hidden).__name__}, not a tensor of "
                "hidden states; use sequential=False"
            )
        rest = {k: v for k, v in kwargs.items() if k != key}
        stored = _store(hidden, cache_dtype, cache_device)
        calls.append(_Call(args, rest, key, stored, hidden.dtype, hidden.device))
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i, batch in enumerate(batches):
            before = len(calls)
            with contextlib.suppress(_Captured):
                feed_batch(model, i, batch, **_use_cache_off(model, batch))
            if len(calls) == before:
                raise ValueError(
                    f"calibration batch {i} ran through {type(model).__name__} without "
                    f"calling {where}, the first of the blocks dpp.oneshot found; use "
                    "sequential=False"
                )
    finally:
        handle.remove()
    # The hidden states are stored apart: drop them from the positional arguments.
    for c in calls:
        if isinstance(c.key, int):
            c.args = (*c.args[: c.key], None, *c.args[c.key + 1 :])
    return calls


def _input_groups(block: nn.Module, names: list[str], layers: dict, call: _Call) -> list[list[str]]:
    """The block's selected layers in forward order, grouped by a shared input tensor."""
    first: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            if name not in first:
                first[name] = args[0] if args else next(iter(kwargs.values()))

        return hook

    handles = [layers[n].register_forward_pre_hook(hook_for(n), with_kwargs=True) for n in names]
    try:
        call.run(block)
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    for name in first:  # insertion order: the order of the first calls
        if groups and first[name] is first[groups[-1][0]]:
            groups[-1].append(name)
        else:
            groups.append([name])
    never = [n for n in names if n not in first]
    if never:
        raise ValueError(_unreached(never[0]))
    return groups


def _run_sequential(
    model: nn.Module,
    state: _Pruning,
    batches: list[Any],
    *,
    true_sequential: bool,
    cache_dtype: torch.dtype | None,
    cache_device: torch.device | str | None,
) -> str | None:
    """Sequential Wanda / SparseGPT over the model's stack of blocks; the stack's name."""
    layers = state.layers
    need_h = state.method == "sparsegpt"
    found = _find_stack(model, list(layers))
    inside: dict[str, list[str]] = {}
    if found is not None:
        _check_block_kwargs_shared(model)
        for bname, _ in found[1]:
            inside[bname] = [n for n in layers if n == bname or n.startswith(bname + ".")]
    in_stack = {n for names in inside.values() for n in names}
    outside = {n: m for n, m in layers.items() if n not in in_stack}
    if found is None:  # no stack: one full-model pass on the dense model
        stats = calibrate(model, outside, batches, hessian=outside if need_h else ())
        for name in outside:
            state.decide(name, stats[name])
        return None

    stack_name, blocks = found
    first_name, first = blocks[0]
    # Capture the first block's inputs; outside layers called on the way are pruned first.
    pre_stats = {n: InputStats() for n in outside}
    handles = watch_inputs(outside, pre_stats, hessian=outside if need_h else ())
    try:
        calls = _capture(
            model, first, first_name, batches, cache_dtype=cache_dtype, cache_device=cache_device
        )
    finally:
        for h in handles:
            h.remove()
    before = [n for n in outside if pre_stats[n].tokens > 0]
    # Layers after the stack are calibrated with a full pass over the pruned blocks: where
    # there are any, the blocks' original weights (update_weights=False,
    # keep_pruned_weights) go back only after that pass.
    after = {n: m for n, m in outside.items() if n not in before}
    if before:
        for name in before:
            state.decide(name, pre_stats[name])
        calls = _capture(
            model, first, first_name, batches, cache_dtype=cache_dtype, cache_device=cache_device
        )

    for bname, block in blocks:
        names = inside[bname]
        groups = (
            _input_groups(block, names, layers, calls[0])
            if true_sequential and names
            else ([names] if names else [])
        )
        for group in groups:
            stats = {n: InputStats() for n in group}
            handles = watch_inputs(
                {n: layers[n] for n in group}, stats, hessian=group if need_h else ()
            )
            try:
                for c in calls:
                    c.run(block)
            finally:
                for h in handles:
                    h.remove()
            for name in group:
                state.decide(name, stats[name])
        for c in calls:  # the next block's inputs, from this (pruned) block
            out = _hidden_of(c.run(block), bname)
            c.hidden, c.dtype, c.device = (
                _store(out, cache_dtype, cache_device),
                out.dtype,
                out.device,
            )
        if not after:
            state.restore(names)

    if after:
        stats = calibrate(model, after, batches, hessian=after if need_h else ())
        for name in after:
            state.decide(name, stats[name])
    return stack_name or "<model>"
