"""Physical channel removal for filter-level masks: a smaller dense model, same outputs.

A ``filter``-pruned layer computes exactly zero on its pruned output channels. :func:`shrink`
removes those channels, with the matching input channels of the layers that consume them
and the BatchNorm entries in between, using Torch-Pruning's dependency graph (optional
dependency: ``pip install dpp[shrink]`` or ``pip install torch-pruning``).

Which channels go (design)
--------------------------
* **Coupled channels.** Channels joined by a residual add (or any other element-wise op) form
  one group: channel ``c`` of the sum exists in every layer feeding it. Their DPP filter masks
  are learned independently and differ in general, so a channel of a coupled group is removed
  only when it is pruned in **every** producing layer of the group (the intersection of their
  pruned sets). Channels pruned in some producers but not all stay, zero where pruned: outputs
  stay exactly equal. A producer without a filter mask (e.g. a shortcut convolution left
  dense) keeps every channel of its group.
* **BatchNorm shift.** A pruned channel is zero after its convolution, but a BatchNorm after it
  turns the zeros into the constant ``beta - gamma * mean / sqrt(var + eps)`` (and a ReLU into
  ``max(0, .)`` of it). The channel is then not zero where it is consumed. :func:`shrink`
  measures the value of every candidate channel at the inputs of its consumers (two forward
  passes on ``example_inputs`` and a perturbed copy; a structurally dead channel is the same
  constant everywhere) and

  - removes it when the value is 0 (e.g. a fresh BatchNorm, or a negative shift before a ReLU);
  - otherwise folds ``value * sum(W[:, c])`` into the consumer's bias and removes it, when that
    is exact: the consumer is an ``nn.Linear`` or an ungrouped convolution without padding;
  - otherwise keeps it (a nonzero constant entering a zero-padded convolution differs from a
    bias at the borders). With ``exact=False`` it is folded anyway: exact away from the
    borders, the error is reported.
* Channels that reach the model's output (no consuming layer) are never removed.

After removal the shrunk model is compared with the unshrunk one on ``example_inputs`` in eval
mode; with ``exact=True`` a difference beyond ``rtol`` raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..bake import bake
from ..modeltools import as_inputs
from ..pruner import Pruner

__all__ = ["ShrinkGroup", "ShrinkReport", "count_flops", "shrink"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_WEIGHTED = (nn.Linear, *_CONV)
_CHANNELWISE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _import_tp():
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise ImportError(
            "dpp.export.shrink needs Torch-Pruning for dependency tracing: "
            "pip install dpp[shrink]  (or: pip install torch-pruning)"
        ) from exc
    return tp


def count_flops(model: nn.Module, example_inputs: Tensor | Sequence[Tensor]) -> int:
    """FLOPs of one forward call, by ``torch.utils.flop_counter.FlopCounterMode`` (a
    multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs = as_inputs(example_inputs)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    model.train(was_training)
    return int(counter.get_total_flops())


@dataclass
class ShrinkGroup:
    """One group of coupled channels (one per root layer Torch-Pruning reports).

    Attributes:
        root: name of the group's first producing layer.
        producers: names of every layer producing these channels (a residual stream has many).
        channels: channels in the group.
        removed: channels removed.
        folded: removed channels whose constant value was folded into consumer biases.
        kept_dead: channels pruned in every producer but kept (see ``reason``).
        reason: why channels were kept (empty when none were).
    """

    root: str
    producers: list[str]
    channels: int
    removed: int = 0
    folded: int = 0
    kept_dead: int = 0
    reason: str = ""


@dataclass
class ShrinkReport:
    """What :func:`shrink` did.

    Attributes:
        groups: one :class:`ShrinkGroup` per group with at least one filter-pruned producer.
        params_before: parameters of the unshrunk model.
        params_after: parameters of the shrunk model.
        flops_before: FLOPs of one forward call on ``example_inputs`` before.
        flops_after: the same after.
        exact: whether only exact removals were made.
        max_abs_error: largest ``|shrunk - unshrunk|`` on ``example_inputs``.
        max_abs_output: largest ``|unshrunk|`` there (the error's scale).
    """

    groups: list[ShrinkGroup] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0
    exact: bool = True
    max_abs_error: float = 0.0
    max_abs_output: float = 0.0

    @property
    def removed(self) -> int:
        return sum(g.removed for g in self.groups)

    def __str__(self) -> str:
        head = f"{'group root':<28} {'channels':>8} {'removed':>8} {'folded':>7}"
        lines = [f"{head} {'kept dead':>9}  note"]
        for g in self.groups:
            lines.append(
                f"{g.root:<28} {g.channels:>8} {g.removed:>8} {g.folded:>7} {g.kept_dead:>9}  "
                f"{g.reason}"
            )
        lines.append(
            f"parameters {self.params_before:,} -> {self.params_after:,}; FLOPs "
            f"{self.flops_before:,} -> {self.flops_after:,}; max |error| "
            f"{self.max_abs_error:.3g} (outputs up to {self.max_abs_output:.3g})"
        )
        return "\n".join(lines)


def _perturbed(inputs: tuple, seed: int = 12345) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in inputs:
        if isinstance(t, Tensor) and t.is_floating_point():
            noise = torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
            out.append(t * 0.5 + noise)
        else:
            out.append(t)
    return tuple(out)


def _input_ranges(model: nn.Module, runs: list[tuple]) -> dict[int, tuple[Tensor, Tensor]]:
    """Per weighted layer: ``(min, max)`` of every input channel (conv) or feature (Linear)
    over the batch, the spatial positions and all ``runs``."""
    ranges: dict[int, tuple[Tensor, Tensor]] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        if isinstance(module, nn.Linear):
            flat = x.reshape(-1, x.shape[-1])
        else:
            flat = x.transpose(0, 1).reshape(x.shape[1], -1).t()
        lo, hi = flat.amin(0), flat.amax(0)
        if id(module) in ranges:
            plo, phi = ranges[id(module)]
            lo, hi = torch.minimum(lo, plo), torch.maximum(hi, phi)
        ranges[id(module)] = (lo, hi)

    handles = [
        m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, _WEIGHTED)
    ]
    try:
        with torch.no_grad():
            for inputs in runs:
                model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return ranges


def _bias_foldable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    pad = module.padding
    no_pad = pad == "valid" or (not isinstance(pad, str) and all(int(p) == 0 for p in pad))
    return no_pad and module.groups == 1


def _fold(module: nn.Module, idx: int, value: float) -> None:
    """Add the contribution of input channel/feature ``idx`` held at ``value`` to the bias."""
    with torch.no_grad():
        w = module.weight[:, idx]
        contrib = value * (w if w.dim() == 1 else w.reshape(w.shape[0], -1).sum(-1))
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros_like(contrib))
        module.bias.add_(contrib.to(module.bias.dtype))


def shrink(
    model_or_pruner: nn.Module | Pruner,
    example_inputs: Tensor | Sequence[Tensor],
    *,
    exact: bool = True,
    rtol: float = 1e-5,
    report: bool = False,
) -> nn.Module | tuple[nn.Module, ShrinkReport]:
    """A smaller dense copy of a filter-pruned model: pruned channels physically removed.

    Args:
        model_or_pruner: a model holding DPP layers, or its :class:`~dpp.Pruner` (live or
            finalized). Only ``filter``-granularity layers remove channels; layers pruned at
            other granularities stay as their finalized dense weights. Not modified.
        example_inputs: a tensor or tuple of tensors the model is called with; used to trace
            the graph, measure the pruned channels' values and check the result.
        exact: only remove channels whose removal is exact (see the module docstring). With
            ``False``, pruned channels entering zero-padded convolutions with a nonzero
            BatchNorm constant are removed too, their constant folded into the bias (exact
            away from the borders); the error is reported, not raised.
        rtol: the check: ``max|shrunk - unshrunk| <= rtol * max|unshrunk|`` on
            ``example_inputs``, else ``RuntimeError`` (``exact=True`` only).
        report: also return a :class:`ShrinkReport`.

    Returns:
        The shrunk model (plain ``nn.Linear``/``nn.ConvNd``/``nn.BatchNorm``, eval mode), or
        ``(model, report)``.

    Raises:
        ImportError: Torch-Pruning is not installed (``pip install dpp[shrink]``).
        ValueError: the model holds no DPP information (pass the Pruner after finalize()).

    Example:
        >>> import torch, dpp
        >>> from dpp.export import shrink
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16),
        ...                             torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3))
        >>> x = torch.randn(2, 3, 8, 8)
        >>> pruner = dpp.prune(model, granularity="filter", density=0.5,
        ...                    overrides={"3": {"prune": False}}, example_inputs=x)
        >>> small = shrink(pruner, x)
        >>> small[0].out_channels, small[3].in_channels
        (8, 8)
    """
    tp = _import_tp()
    baked = bake(model_or_pruner, what="shrink")
    inputs = as_inputs(example_inputs)
    work = baked.model.eval()
    names = {id(m): n for n, m in work.named_modules()}

    keep: dict[int, Tensor] = {}  # id(module) -> bool [C_out], current index space
    for name, rec in baked.layers.items():
        if rec.layout is not None and rec.layout.granularity == "filter":
            module = baked.module(name)
            if not isinstance(module, _WEIGHTED):
                raise ValueError(
                    f"shrink: layer {name!r} is a {type(module).__name__}, and channels are "
                    "removed from nn.Linear and nn.ConvNd layers only (Torch-Pruning's graph "
                    "knows those); prune it at another granularity, or use the finalized model"
                )
            assert rec.channel_mask is not None
            keep[id(module)] = rec.channel_mask.cpu()

    out_report = ShrinkReport(exact=exact)
    out_report.params_before = sum(p.numel() for p in work.parameters())
    out_report.flops_before = count_flops(work, inputs)
    with torch.no_grad():
        reference = work(*inputs)
    ranges = _input_ranges(work, [inputs, _perturbed(inputs)])
    # Original input index of every current input channel/feature of each consumer.
    in_map: dict[int, list[int]] = {}

    graph = tp.DependencyGraph().build_dependency(work, example_inputs=inputs)
    work.eval()
    # Lazily: each group is traced after the previous ones were pruned, so its indices are
    # those of the current shapes (in_map and keep follow them).
    for group in graph.get_all_groups(root_module_types=_WEIGHTED):
        _shrink_group(graph, group, keep, ranges, in_map, names, exact, out_report)

    work.eval()
    with torch.no_grad():
        result = work(*inputs)
    ref_t = torch.as_tensor(reference) if not isinstance(reference, Tensor) else reference
    res_t = torch.as_tensor(result) if not isinstance(result, Tensor) else result
    if ref_t.shape != res_t.shape:
        raise RuntimeError(
            f"shrink changed the output shape from {list(ref_t.shape)} to {list(res_t.shape)}; "
            "please report this with the model"
        )
    out_report.max_abs_error = float((res_t - ref_t).abs().max()) if ref_t.numel() else 0.0
    out_report.max_abs_output = float(ref_t.abs().max()) if ref_t.numel() else 0.0
    if exact and out_report.max_abs_error > rtol * max(out_report.max_abs_output, 1e-12):
        raise RuntimeError(
            f"shrink: the shrunk model differs from the pruned one by up to "
            f"{out_report.max_abs_error:.3g} (outputs up to {out_report.max_abs_output:.3g}, "
            f"rtol={rtol}); the model contains an operation the exactness analysis does not "
            "cover. Please report it; shrink(..., exact=False) removes the channels anyway."
        )
    out_report.params_after = sum(p.numel() for p in work.parameters())
    out_report.flops_after = count_flops(work, inputs)
    return (work, out_report) if report else work


def _shrink_group(
    graph: Any,
    group: Any,
    keep: dict[int, Tensor],
    ranges: dict[int, tuple[Tensor, Tensor]],
    in_map: dict[int, list[int]],
    names: dict[int, str],
    exact: bool,
    out_report: ShrinkReport,
) -> None:
    items = list(group.items)
    root_module = items[0].dep.target.module
    channels = len(items[0].idxs)
    producers = []
    consumers = []
    blocker = ""
    for item in items:
        module = item.dep.target.module
        is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
        if isinstance(module, _WEIGHTED):
            (producers if is_out else consumers).append(item)
        elif isinstance(module, nn.Module) and not isinstance(module, _CHANNELWISE):
            if any(True for _ in module.parameters(recurse=False)):
                blocker = f"coupled with a {type(module).__name__}"
        elif isinstance(module, nn.Parameter):
            blocker = "coupled with a bare nn.Parameter"
    producer_names = sorted({names.get(id(p.dep.target.module), "?") for p in producers})
    if not any(id(p.dep.target.module) in keep for p in producers):
        return  # no filter-pruned layer here: nothing to do, nothing to report
    entry = ShrinkGroup(names.get(id(root_module), "?"), producer_names, channels)
    out_report.groups.append(entry)

    # 1. Channels pruned in every producer.
    dead = torch.ones(channels, dtype=torch.bool)
    for p in producers:
        mask = keep.get(id(p.dep.target.module))
        if mask is None:
            dead[:] = False
            blocker = blocker or (
                f"producer {names.get(id(p.dep.target.module), '?')} has no filter mask"
            )
            break
        for idx, root in zip(p.idxs, p.root_idxs, strict=True):
            if bool(mask[idx]):
                dead[root] = False
    n_dead = int(dead.sum())
    if blocker or not consumers:
        entry.kept_dead = n_dead if not blocker else 0
        entry.reason = blocker or "the channels reach the model output"
        return
    if n_dead == 0:
        entry.reason = "no channel is pruned in every producer (coupled masks differ)"
        return

    # 2. Their value at every consumer: zero (drop), foldable constant (fold), else keep.
    folds: list[tuple[nn.Module, int, float, int]] = []
    removable = dead.clone()
    reasons = set()
    for c in consumers:
        module = c.dep.target.module
        lo, hi = ranges[id(module)]
        cur2orig = in_map.setdefault(id(module), list(range(lo.numel())))
        for idx, root in zip(c.idxs, c.root_idxs, strict=True):
            if not bool(dead[root]):
                continue
            orig = cur2orig[idx]
            vlo, vhi = float(lo[orig]), float(hi[orig])
            if vlo != vhi:
                removable[root] = False
                reasons.add(f"input of {names.get(id(module), '?')} not constant")
            elif vlo == 0.0:
                continue
            elif _bias_foldable(module) or not exact:
                folds.append((module, idx, vlo, int(root)))
            else:
                removable[root] = False
                reasons.add(f"nonzero BatchNorm constant into padded {names.get(id(module), '?')}")
    roots = [int(r) for r in removable.nonzero().flatten()]
    if len(roots) >= channels:
        roots = roots[:-1]  # never remove every channel
    root_set = set(roots)
    folded_roots = set()
    for module, idx, value, root in folds:
        if root in root_set:
            _fold(module, idx, value)
            folded_roots.add(root)
    entry.removed = len(roots)
    entry.folded = len(folded_roots)
    entry.kept_dead = n_dead - len(roots)
    entry.reason = "; ".join(sorted(reasons))
    if not roots:
        return

    # 3. Remove, and keep the index maps of the layers touched in step with the new shapes.
    removed_by_module: dict[tuple[int, bool], list[int]] = {}
    for item in items:
        module = item.dep.target.module
        if not isinstance(module, _WEIGHTED):
            continue
        is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
        gone = [
            idx
            for idx, root in zip(item.idxs, item.root_idxs, strict=True)
            if int(root) in root_set
        ]
        removed_by_module.setdefault((id(module), is_out), []).extend(gone)
    group.prune(idxs=roots)
    for (mid, is_out), gone in removed_by_module.items():
        if is_out:
            if mid in keep:
                mask = keep[mid]
                sel = torch.ones(mask.numel(), dtype=torch.bool)
                sel[list(set(gone))] = False
                keep[mid] = mask[sel]
        elif mid in in_map:
            drop = set(gone)
            in_map[mid] = [o for i, o in enumerate(in_map[mid]) if i not in drop]
