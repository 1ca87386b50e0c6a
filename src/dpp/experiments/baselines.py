"""The pruning methods DPP is compared with, trained by the same trainer.

Each baseline is a :class:`~dpp.experiments.methods.TrainingMethod`; the k-of-n ones reuse
the core's mechanics (``dpp.prune`` with a custom ``mask_source``), so layouts, quantization
(binary included), finalize, storage accounting and export work for them unchanged. Only
the scoring rule differs:

================== =======================================================================
method             rule
================== =======================================================================
magnitude_global   global unstructured magnitude pruning (``torch.nn.utils.prune``) of a
                   dense checkpoint (``train.init_from``), then fine-tuning: no structure,
                   the accuracy ceiling for a given number of kept weights
magnitude_kofn     one-shot magnitude k-of-n (per neuron or N:M blocks) of a dense
                   checkpoint, then fine-tuning with the mask fixed (NVIDIA's ASP recipe,
                   generalised beyond 2:4)
gradual_kofn       gradual magnitude pruning to the same k-of-n constraint, the cubic
                   schedule of Zhu & Gupta (2017), masks recomputed every ``frequency``
                   steps from ``begin_epoch`` to ``end_epoch``
srste              SR-STE (Zhou et al. 2021): the top-k by magnitude re-picked every step,
                   dense straight-through gradient plus ``decay * (1 - mask) * W``
random_kofn        a random k-of-n mask drawn once and kept fixed (the floor)
================== =======================================================================

Options go in the run config's ``[baseline]`` section (keys per method in
:data:`BASELINE_OPTIONS`, each validated by the pydantic model its class registers).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import pydantic
import torch
from torch import Tensor, nn

from dpp.granularity import GroupLayout
from dpp.masks import FixedMask, MaskSource, topk_mask

from .errors import ConfigError
from .methods import METHODS, TrainingMethod, prune_with_config, register_method
from .seeding import name_seed

__all__ = [
    "BASELINES",
    "BASELINE_OPTIONS",
    "GradualMagnitudeMask",
    "SRSTEMask",
    "create_baseline",
    "magnitude_mask",
]

if TYPE_CHECKING:
    from .runconfig import RunConfig

_STRICT = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


class GradualOptions(pydantic.BaseModel):
    """``gradual_kofn``: prune from ``begin_epoch`` to ``end_epoch`` (default 3/4 of the
    epochs), recomputing the masks every ``frequency`` steps."""

    model_config = _STRICT
    begin_epoch: pydantic.NonNegativeFloat = 0.0
    end_epoch: pydantic.PositiveFloat | None = None
    frequency: pydantic.PositiveInt = 50


class SRSTEOptions(pydantic.BaseModel):
    """``srste``: the decay of the pruned weights."""

    model_config = _STRICT
    decay: pydantic.NonNegativeFloat = 2e-4


class RandomOptions(pydantic.BaseModel):
    """``random_kofn``: the seed of the masks (default: the run's seed)."""

    model_config = _STRICT
    seed: pydantic.NonNegativeInt | None = None


def magnitude_mask(layout: GroupLayout, weight: Tensor, k: int | None = None) -> Tensor:
    """``[num_groups, n]`` k-hot mask of the largest candidates by magnitude (L2 per candidate)."""
    return topk_mask(layout.candidate_scores(weight), layout.k if k is None else k)


class GradualMagnitudeMask(MaskSource):
    """A magnitude mask whose density the method lowers step by step (buffer ``mask``).

    Starts dense; :meth:`prune_to` keeps the ``k_t`` largest of the weights still kept, so a
    pruned weight never comes back (Zhu & Gupta 2017).
    """

    def __init__(self, layout: GroupLayout, device: torch.device | None = None) -> None:
        super().__init__(layout)
        self.register_buffer("mask", torch.ones(layout.num_groups, layout.n, device=device))

    @torch.no_grad()
    def prune_to(self, weight: Tensor, k: int) -> None:
        kept = self.layout.expand(self.mask).to(weight.dtype)
        scores = self.layout.candidate_scores(weight * kept)
        scores = scores.masked_fill(self.mask == 0, -1.0)  # pruned ones stay pruned
        self.mask.copy_(topk_mask(scores, k))

    def sample(self, weight: Tensor) -> Tensor:
        return self.mask

    def deterministic(self, weight: Tensor) -> Tensor:
        return self.mask


class _SRSTEProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, kept: Tensor, decay: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight, kept)
        ctx.decay = decay
        return weight * kept

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        weight, kept = ctx.saved_tensors
        # Dense straight-through gradient, plus the sparse-refined decay of pruned weights.
        return grad + ctx.decay * (1 - kept) * weight, None, None


class SRSTEMask(MaskSource):
    """SR-STE: top-k by magnitude re-picked at every forward call, dense STE gradient."""

    def __init__(self, layout: GroupLayout, decay: float = 2e-4) -> None:
        super().__init__(layout)
        self.decay = decay

    def sample(self, weight: Tensor) -> Tensor:
        return magnitude_mask(self.layout, weight)

    def deterministic(self, weight: Tensor) -> Tensor:
        return magnitude_mask(self.layout, weight)

    def masked_weight(self, weight: Tensor, kept: Tensor) -> Tensor:
        return _SRSTEProduct.apply(weight, kept, self.decay)


def _options(cfg: RunConfig) -> dict[str, Any]:
    """The method's options with defaults (the run config has validated them)."""
    return METHODS.get(cfg.method).meta["options"](**cfg.baseline).model_dump()


def _require_dense_start(cfg: RunConfig) -> None:
    if not cfg.train.init_from:
        raise ConfigError(
            f"method {cfg.method!r} prunes a trained dense model: set train.init_from to a dense "
            "run directory (train one with method = 'dense')"
        )


class _KOfNBaseline(TrainingMethod):
    """A k-of-n baseline: ``dpp.prune`` with a mask source instead of learned logits."""

    prunes_with = "mask_source"

    def __init__(self, model: nn.Module, cfg: RunConfig, steps_per_epoch: int) -> None:
        super().__init__(model, cfg, steps_per_epoch)
        self.name = cfg.method
        self.options = _options(cfg)
        self.pruner = prune_with_config(cfg, model, steps_per_epoch, mask_source=self.source)

    def source(self, name: str, module: nn.Module, layout: GroupLayout) -> MaskSource:
        raise NotImplementedError

    def param_groups(self, *, logit_lr: float | None = None, **options: Any) -> list[dict]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": params, "name": "weights", **options}]


@register_method("magnitude_kofn")
class MagnitudeKOfN(_KOfNBaseline):
    def __init__(self, model: nn.Module, cfg: RunConfig, steps_per_epoch: int) -> None:
        _require_dense_start(cfg)
        super().__init__(model, cfg, steps_per_epoch)

    def source(self, name: str, module: nn.Module, layout: GroupLayout) -> MaskSource:
        return FixedMask(layout, magnitude_mask(layout, module.weight))


@register_method("random_kofn", RandomOptions)
class RandomKOfN(_KOfNBaseline):
    def source(self, name: str, module: nn.Module, layout: GroupLayout) -> MaskSource:
        seed = self.options["seed"] if self.options["seed"] is not None else self.cfg.seed
        gen = torch.Generator().manual_seed(name_seed(int(seed), name))
        scores = torch.rand(layout.num_groups, layout.n, generator=gen)
        return FixedMask(layout, topk_mask(scores, layout.k).to(module.weight.device))


@register_method("srste", SRSTEOptions)
class SRSTE(_KOfNBaseline):
    def source(self, name: str, module: nn.Module, layout: GroupLayout) -> MaskSource:
        return SRSTEMask(layout, decay=float(self.options["decay"]))


@register_method("gradual_kofn", GradualOptions)
class GradualKOfN(_KOfNBaseline):
    """Cubic density schedule ``d_t = d + (1 - d) (1 - p)^3``, ``p`` the progress in [0, 1]."""

    sparse_from_start = False

    def __init__(self, model: nn.Module, cfg: RunConfig, steps_per_epoch: int) -> None:
        super().__init__(model, cfg, steps_per_epoch)
        epochs = cfg.train.epochs
        end = self.options["end_epoch"]
        end = 0.75 * epochs if end is None else float(end)
        begin = float(self.options["begin_epoch"])
        if not 0 <= begin < end <= epochs:
            raise ConfigError(
                f"baseline: need 0 <= begin_epoch < end_epoch <= train.epochs (= {epochs}); "
                f"got begin_epoch={begin}, end_epoch={end}"
            )
        self.begin_step = round(begin * steps_per_epoch)
        self.end_step = max(self.begin_step + 1, round(end * steps_per_epoch))
        self.frequency = int(self.options["frequency"])
        self.step = 0

    def source(self, name: str, module: nn.Module, layout: GroupLayout) -> MaskSource:
        return GradualMagnitudeMask(layout, device=module.weight.device)

    def k_at(self, layout: GroupLayout, step: int) -> int:
        progress = min(max((step - self.begin_step) / (self.end_step - self.begin_step), 0.0), 1.0)
        density = layout.density + (1 - layout.density) * (1 - progress) ** 3
        return max(layout.k, min(layout.n, math.ceil(density * layout.n - 1e-9)))

    def after_step(self) -> None:
        self.step += 1
        if self.step < self.begin_step:
            return
        at_update = (self.step - self.begin_step) % self.frequency == 0
        if at_update or self.step == self.end_step:
            assert self.pruner is not None
            for layer in self.pruner.layers.values():
                source = layer.dpp
                if isinstance(source, GradualMagnitudeMask):
                    source.prune_to(layer.weight, self.k_at(source.layout, self.step))

    def end_epoch(self, epoch: int) -> None:
        if epoch + 1 == self.cfg.train.epochs:  # the schedule must end at the target k
            assert self.pruner is not None
            for layer in self.pruner.layers.values():
                if isinstance(layer.dpp, GradualMagnitudeMask):
                    layer.dpp.prune_to(layer.weight, layer.dpp.layout.k)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])

    def describe(self) -> dict[str, Any]:
        assert self.pruner is not None
        return {
            "density": {
                name: self.k_at(layer.dpp_layout, self.step) / layer.dpp_layout.n
                for name, layer in self.pruner.layers.items()
                if layer.dpp_layout is not None
            }
        }


@register_method("magnitude_global")
class MagnitudeGlobal(TrainingMethod):
    """Global unstructured magnitude pruning with ``torch.nn.utils.prune``, then fine-tuning.

    Prunes the layers the ``pruning`` section selects, keeping exactly as many weights in
    total as the k-of-n methods keep there, wherever they are.
    """

    name = "magnitude_global"
    prunes_with = "logits"  # dpp.prune on a copy: which layers, how many weights

    def __init__(self, model: nn.Module, cfg: RunConfig, steps_per_epoch: int) -> None:
        super().__init__(model, cfg, steps_per_epoch)
        _require_dense_start(cfg)
        _options(cfg)
        import torch.nn.utils.prune as torch_prune

        # Which layers, and how many weights k-of-n would keep there: ask dpp on a copy.
        probe = prune_with_config(cfg, copy.deepcopy(model), steps_per_epoch)
        rows = [r for r in probe.rows() if r.k is not None]
        self.targets = [(model.get_submodule(r.layer), "weight") for r in rows]
        total = sum(r.weights for r in rows)
        kept = sum(r.kept for r in rows)
        torch_prune.global_unstructured(
            self.targets, pruning_method=torch_prune.L1Unstructured, amount=total - kept
        )
        self.kept, self.total = kept, total

    def finalize(self) -> nn.Module:
        """Bake the masks into the weights (``torch.nn.utils.prune.remove``) on a copy."""
        import torch.nn.utils.prune as torch_prune

        final = copy.deepcopy(self.model)
        for module in final.modules():
            if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
                torch_prune.remove(module, "weight")
        return final

    def count_parameters(self) -> tuple[int, int]:
        dense = sum(
            p.numel() for n, p in self.model.named_parameters() if not n.endswith("weight_orig")
        ) + sum(m.weight_orig.numel() for m, _ in self.targets)
        return dense, dense - (self.total - self.kept)


#: Baseline method -> its default options.
BASELINE_OPTIONS: dict[str, dict[str, Any]] = {
    e.name: e.meta["options"]().model_dump() for e in METHODS if e.name not in ("dense", "dpp")
}
BASELINES: tuple[str, ...] = tuple(BASELINE_OPTIONS)


def create_baseline(cfg: RunConfig, model: nn.Module, steps_per_epoch: int) -> TrainingMethod:
    """The baseline named by ``cfg.method``."""
    if cfg.method not in BASELINES:
        raise ConfigError(
            f"unknown method {cfg.method!r}; valid: dense, dpp, {', '.join(BASELINES)}"
        )
    return METHODS.get(cfg.method).obj(model, cfg, steps_per_epoch)
