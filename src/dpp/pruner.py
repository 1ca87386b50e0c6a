"""``dpp.prune(model, ...)``: one call that adds DPP to a model; the :class:`Pruner` it returns."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .bake import bake_in_place
from .batchnorm import link_batchnorms
from .config import DPPConfig, LayerSettings, matches_pattern
from .granularity import GroupLayout
from .hf_save import guard_save_pretrained, unguard_save_pretrained
from .layers import (
    DPPLayer,
    FinalizedLayer,
    canonical_weight,
    is_dpp_layer,
    masked_class,
    wrap,
)
from .masks import DPPMask, MaskSource
from .modeltools import module_aliases, set_module
from .optim import DPPAdam
from .priors import CALIBRATED_PRIORS, HESSIAN_PRIORS, InputStats, calibrate, prior_scores
from .quantization import QuantSpec

__all__ = ["FinalizedError", "FinalizedLayer", "LayerRow", "Pruner", "prune"]


class FinalizedError(RuntimeError):
    """The pruner was used after :meth:`Pruner.finalize` put plain layers back."""


@dataclass(frozen=True)
class LayerRow:
    """One touched layer of :meth:`Pruner.rows` (``None`` where the layer is not pruned).

    Attributes:
        layer: module name.
        type: class name of the plain layer (``"Linear"``, ``"Conv2d"``, ...).
        granularity: ``"weight"``, ``"block(4)"``, ... or ``None`` (quantized only).
        groups: number of groups, or ``None``.
        n: candidates per group, or ``None``.
        k: kept per group, or ``None``.
        density: ``k / n`` (1.0 when not pruned).
        bits: weight bits (32 for float weights).
        weights: weights of the layer.
        kept: weights the mask keeps.
    """

    layer: str
    type: str
    granularity: str | None
    groups: int | None
    n: int | None
    k: int | None
    density: float
    bits: int | str
    weights: int
    kept: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (``None`` for the fields of an unpruned layer)."""
        return dict(self.__dict__)


def _fast_path_members(model: nn.Module) -> set[int]:
    """Modules inside an ``nn.TransformerEncoderLayer``: its inference fast path reads
    ``linear1.weight``/``linear2.weight`` directly, bypassing a mask, unless one of its
    submodules has a hook."""
    return {
        id(m)
        for layer in model.modules()
        if isinstance(layer, nn.TransformerEncoderLayer)
        for m in layer.modules()
    }


def _keep_slow_path(module: nn.Module, args: tuple) -> None:
    """No-op forward pre-hook; its presence turns off the transformer fast path."""
    return None


_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def _why_not_prunable(module: nn.Module) -> str | None:
    """Why DPP cannot prune a module that holds weights (``None``: prunable, or no weights
    DPP would prune: norms, biases, embeddings are handled by the caller)."""
    cls = type(module)
    if isinstance(module, nn.MultiheadAttention):
        return (
            "it computes its q/k/v and output projections from raw weights (in_proj_weight, "
            "out_proj.weight) without calling a Linear's forward, so a mask there would be "
            "ignored; build the attention from nn.Linear q/k/v/out modules to prune it "
            "(see examples/transformer_2of4.py)"
        )
    if masked_class(cls) is not None or isinstance(module, (*_EMBEDDINGS, *_NORMS)):
        return None
    base = next((c for c in cls.__mro__[1:] if masked_class(c) is not None), None)
    if base is not None:
        return (
            f"its class overrides forward() of {base.__name__}, where DPP applies the mask; "
            f"keep {base.__name__}'s forward in the subclass, or exclude the module"
        )
    weight = getattr(module, "weight", None)
    if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
        return (
            "DPP prunes nn.Linear, nn.Conv1d/2d/3d, transformers' Conv1D and their subclasses "
            "that keep the parent's forward; exclude the module to silence this"
        )
    return None


def _candidates(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """``(prunable layers, {name: why not}` of the weight-bearing modules DPP cannot prune)``.

    The output projection of an ``nn.MultiheadAttention`` is neither: its forward is never
    called, and the attention module itself is reported.
    """
    inside_attention = {
        id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)
    }
    candidates: list[tuple[str, nn.Module]] = []
    unsupported: dict[str, str] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in seen or id(module) in inside_attention:
            continue
        seen.add(id(module))
        if masked_class(type(module)) is not None:
            candidates.append((name, module))
        elif isinstance(module, _EMBEDDINGS):
            unsupported[name] = (
                "an embedding is a table lookup, not a matrix product; DPP prunes none"
            )
        else:
            why = _why_not_prunable(module)
            if why is not None:
                unsupported[name] = why
    return candidates, unsupported


def _named(modules: dict[str, str], model: nn.Module) -> str:
    """``"Class 'name': not pruned, since why"`` lines."""
    return "\n".join(
        f"  {type(model.get_submodule(n)).__name__} {n!r}: not pruned, since {why}"
        for n, why in modules.items()
    )


def _warn_unsupported(model: nn.Module, unsupported: dict[str, str], cfg: DPPConfig) -> None:
    """One warning naming every weight-bearing module DPP leaves as it is: selected ones,
    and embeddings only when a pattern names them."""
    asked = [*(cfg.include or []), *cfg.overrides]
    shown = {
        n: why
        for n, why in unsupported.items()
        if cfg.selects(n)
        and (
            not isinstance(model.get_submodule(n), _EMBEDDINGS)
            or any(matches_pattern(n, p) for p in asked)
        )
    }
    if shown:
        warnings.warn(
            f"dpp.prune: {len(shown)} module(s) with weights stay dense, DPP cannot mask "
            f"them:\n{_named(shown, model)}",
            stacklevel=3,
        )


def _nothing_selected(
    model: nn.Module, names: list[str], unsupported: dict[str, str], cfg: DPPConfig, dense: dict
) -> str:
    """The error when no prunable layer is left to prune, saying which rule removed them."""
    rules = []
    if cfg.include is not None:
        rules.append(f"include={cfg.include}")
    if cfg.exclude:
        rules.append(f"exclude={cfg.exclude}")
    defaults = [n for n in dense if n in names]  # prunable layers left dense by default
    if defaults:
        rules.append(f"dense by default: {', '.join(defaults)}")
    listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    msg = (
        f"every prunable layer of the {type(model).__name__} is excluded "
        f"({'; '.join(rules)}), so there is nothing to prune. The prunable layers are: "
        f"{listed}; widen include or narrow exclude."
    )
    asked = {n: why for n, why in unsupported.items() if cfg.selects(n)}
    if cfg.include is not None and asked:
        msg += f" The selected modules DPP cannot prune:\n{_named(asked, model)}"
    return msg


# DPPConfig fields that change neither a draw nor its gradient, bit for bit: a saved pruner
# state loads into a pruner that sets them otherwise.
_SAME_NUMBERS = ("keep_scores",)


class Pruner:
    """Handle on a model pruned with :func:`prune`: schedules, losses, masks, finalize.

    Do not build it directly; call :func:`prune`. It holds no global state: the masks live
    in the model's layers, the pruner only references them.

    Call :meth:`step` once per optimizer step (after ``optimizer.step()``): it advances the
    temperature and noise schedules, whose ``steps`` therefore count optimizer steps.
    """

    def __init__(self, model: nn.Module, config: DPPConfig, layers: dict[str, DPPLayer]) -> None:
        self.model = model
        self.config = config
        self.layers = layers
        self._step = 0
        self._finalized: dict[str, FinalizedLayer] | None = None
        # Names of the parameters freeze_weights() froze (unfreeze_weights() thaws these only).
        self._frozen_weights: list[str] = []
        # {filter layer: BatchNorm after it}, filled by dpp.prune(..., example_inputs=...).
        self.batchnorm_links: dict[str, str] = {}
        # {layer: why}: prunable layers left dense by default (a language model's output head).
        self.dense_by_default: dict[str, str] = {}
        self._apply_schedules()

    # ------------------------------------------------------------------ helpers
    def _check_live(self, what: str) -> None:
        if self._finalized is not None:
            raise FinalizedError(
                f"Pruner.{what}() was called after finalize(): the model holds plain layers "
                "now. Call dpp.prune() on a fresh model to prune again, or use "
                "pruner.finalized_layers for what finalize() baked in."
            )

    def _sources(self) -> Iterator[tuple[str, DPPMask]]:
        for name, layer in self.layers.items():
            if isinstance(layer.dpp, DPPMask):
                yield name, layer.dpp

    def _apply_schedules(self) -> None:
        tau = self.temperature
        beta = self.noise_scale
        if not tau > 0:
            raise ValueError(f"the temperature schedule reached {tau}; it must stay > 0")
        if not beta >= 0:
            raise ValueError(f"the noise-scale schedule reached {beta}; it must stay >= 0")
        ramp = self.ramp
        for _, source in self._sources():
            source.tau = tau
            source.noise_scale = beta
            # resample_every = M: the draw is held while step // M stays the same.
            source.resample_every = self.config.resample_every
            source.keep_scores = self.config.keep_scores
            source.draw_index = self._step // self.config.resample_every
            lay = source.layout
            source.current_k = lay.k if ramp >= 1 else math.ceil(lay.n - ramp * (lay.n - lay.k))

    # ------------------------------------------------------------------ schedules
    @property
    def current_step(self) -> int:
        """How many times :meth:`step` has been called."""
        return self._step

    @property
    def temperature(self) -> float:
        """The relaxation temperature at the current step."""
        return self.config.temperature.value(self._step)

    @property
    def ramp(self) -> float:
        """Fraction of the target sparsity reached (1 without a ``sparsity_ramp``)."""
        ramp = self.config.sparsity_ramp
        return 1.0 if ramp is None else ramp.value(self._step)

    @property
    def noise_scale(self) -> float:
        """The Gumbel noise multiplier at the current step."""
        return self.config.noise_scale.value(self._step)

    def step(self, steps: int = 1) -> None:
        """Advance the temperature and noise schedules; call once per optimizer step.

        Warns once (a ``UserWarning``) when the masks are not learning: every learned mask
        is in eval mode (its mask is the deterministic top-k, so its logits get no
        gradient: call ``model.train()``), or a layer's weight was trained since the
        previous call while its logits got no gradient and did not change.
        """
        self._check_live("step")
        self._warn_if_masks_not_learning()
        self._step += int(steps)
        self._apply_schedules()

    def _warn_if_masks_not_learning(self) -> None:
        """The check of :meth:`step`: the mode of each learned mask; per layer, whether the
        weight moved (a gradient, or an in-place update: its version counter) while the
        logits did not. A few attribute reads per layer, no tensor work."""
        if getattr(self, "_warned_not_learning", False):
            return
        learned = [(n, s) for n, s in self._sources() if s.logits.requires_grad]
        if not learned:
            return  # fixed masks, or logits frozen on purpose
        if not any(source.training for _, source in learned):
            self._warn_not_learning(
                "every DPP layer is in eval mode, where its mask is the deterministic top-k "
                "of its logits, so the logits get no gradient and the masks do not learn"
            )
            return
        versions = {n: (s.logits._version, self.layers[n].weight._version) for n, s in learned}
        before: dict[str, tuple[int, int]] = getattr(self, "_learning_versions", {})
        self._learning_versions = versions
        stuck = []
        for name, source in learned:
            if name not in before:
                continue
            weight = self.layers[name].weight
            weight_moved = weight.grad is not None or weight._version != before[name][1]
            logits_moved = source.logits.grad is not None or versions[name][0] != before[name][0]
            if weight_moved and not logits_moved:
                stuck.append(name)
        if stuck:
            listed = ", ".join(stuck[:5]) + (", ..." if len(stuck) > 5 else "")
            self._warn_not_learning(
                f"the weights of {listed} were trained since the previous step() but their "
                "mask logits got no gradient, so those masks do not learn (a layer in eval "
                "mode uses its deterministic mask; an optimizer built before dpp.prune does "
                "not hold the logits)"
            )

    def _warn_not_learning(self, cause: str) -> None:
        self._warned_not_learning = True
        warnings.warn(
            f"Pruner.step(): {cause}. Call model.train() before training (transformers' "
            "from_pretrained returns a model in eval mode) and build the optimizer after "
            "dpp.prune, from pruner.param_groups(...).",
            UserWarning,
            stacklevel=4,
        )

    def state_dict(self) -> dict[str, Any]:
        """The pruner's own state (schedule position, config, whether the masks are frozen);
        the logits are in the model's."""
        return {
            "step": self._step,
            "config": self.config.to_dict(),
            "masks_frozen": self.masks_frozen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the schedule position saved by :meth:`state_dict`, and freeze the masks
        when they were frozen (a pruner's masks are never unfrozen by it)."""
        self._check_live("load_state_dict")
        saved = state.get("config")
        current = self.config.to_dict()
        if saved is not None:
            # Fill keys added since the state was saved with their defaults before comparing,
            # and leave out what does not change the numbers (keep_scores: memory against
            # time, the same masks and gradients), so a run resumes with either.
            saved = DPPConfig.from_dict(saved).to_dict()
            for key in _SAME_NUMBERS:
                saved.pop(key, None)
                current.pop(key, None)
        if saved is not None and saved != current:
            raise ValueError(
                "the saved pruner state comes from a different DPP config; build the pruner "
                f"with the saved config (DPPConfig.from_dict(state['config'])). Saved: {saved}"
            )
        self._step = int(state["step"])
        self._apply_schedules()
        if state.get("masks_frozen", False) and not self.masks_frozen:
            self.freeze_masks()

    # ------------------------------------------------------------------ training helpers
    def logits(self) -> list[nn.Parameter]:
        """The trainable mask logits of every learned layer."""
        self._check_live("logits")
        return [source.logits for _, source in self._sources()]

    def param_groups(
        self,
        *,
        logit_lr: float | None = None,
        logit_weight_decay: float = 0.0,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups with the logits in a group of their own.

        Args:
            logit_lr: learning rate of the logits (default: the optimizer's ``lr``).
            logit_weight_decay: weight decay of the logits (0: decay would pull every
                group towards a uniform choice).
            **options: options of the other group (``lr``, ``weight_decay``, ...).

        Example:
            >>> import torch, dpp
            >>> model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 2))
            >>> pruner = dpp.prune(model, density=0.25)
            >>> opt = torch.optim.Adam(pruner.param_groups(lr=1e-3, logit_lr=1e-2))
            >>> [len(g["params"]) for g in opt.param_groups]
            [4, 2]
        """
        self._check_live("param_groups")
        logits = self.logits()
        ids = {id(p) for p in logits}
        others = [p for p in self.model.parameters() if id(p) not in ids and p.requires_grad]
        logit_group: dict[str, Any] = {"params": logits, "weight_decay": logit_weight_decay}
        if logit_lr is not None:
            logit_group["lr"] = logit_lr
        if not others:  # mask-only training (freeze_weights): the logits alone
            return [{**options, **logit_group}]
        return [{"params": others, **options}, logit_group]

    def optimizer(
        self,
        *,
        lr: float = 1e-3,
        logit_lr: float | None = None,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        seed: int | None = None,
    ) -> torch.optim.Optimizer:
        """The recommended optimizer: AdamW on the weights, compact Adam on the logits.

        One :class:`dpp.optim.DPPAdam` over :meth:`param_groups`: the trainable weights
        (none after :meth:`freeze_weights`) get AdamW, the logits a bfloat16 first moment,
        one float32 second moment per group of n candidates and, when stored in 16 bits
        (``logit_dtype``), stochastic rounding; about 3 bytes of state per logit at 2:4
        instead of AdamW's 8. Its ``state_dict`` holds the rounding stream, so resuming is
        exact. Build it after :func:`prune` (and after :meth:`freeze_weights`).

        Args:
            lr: learning rate of the weights (and of the logits without ``logit_lr``).
            logit_lr: learning rate of the logits.
            weight_decay: decoupled weight decay of the weights (the logits get none).
            betas: Adam's ``(beta1, beta2)``, both groups.
            eps: Adam's epsilon, both groups.
            seed: seed of the stochastic rounding (default: from torch's global RNG).

        Returns:
            A ``torch.optim.Optimizer`` whose last parameter group holds the logits
            (``compact=True``).

        Example:
            >>> import torch, dpp
            >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
            >>> pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
            >>> opt = pruner.optimizer(lr=1e-3, logit_lr=1e-2)
            >>> [(len(g["params"]), g["compact"]) for g in opt.param_groups]
            [(4, False), (2, True)]
        """
        groups = self.param_groups(lr=lr, logit_lr=logit_lr, weight_decay=weight_decay)
        groups[-1]["compact"] = True
        return DPPAdam(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, seed=seed)

    def freeze_weights(self) -> int:
        """Mask-only training (the MaskLLM regime): only the logits keep learning.

        Every parameter of the model except the mask logits stops requiring gradients, so
        the weights stay exactly those of the dense model while DPP learns which k of n to
        keep; :meth:`param_groups` then returns the logits' group only. Call it before
        building the optimizer.

        Returns:
            The number of parameter tensors frozen.

        Example:
            >>> import torch, dpp
            >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
            >>> pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
            >>> pruner.freeze_weights()
            4
            >>> [len(g["params"]) for g in pruner.param_groups(lr=1e-2)]
            [2]
        """
        self._check_live("freeze_weights")
        ids = {id(p) for p in self.logits()}
        frozen = 0
        for name, p in self.model.named_parameters():
            if id(p) not in ids and p.requires_grad:
                p.requires_grad_(False)
                self._frozen_weights.append(name)
                frozen += 1
        return frozen

    def unfreeze_weights(self) -> int:
        """Undo :meth:`freeze_weights`: the parameters it froze require gradients again.

        Parameters frozen before it (by the user) stay frozen. With :meth:`freeze_masks`,
        this turns mask-only training into fine-tuning under the learned masks; build a new
        optimizer afterwards (the old one does not hold the weights).

        Returns:
            The number of parameter tensors thawed.

        Example:
            >>> import torch, dpp
            >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
            >>> pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
            >>> pruner.freeze_weights(), pruner.unfreeze_weights()
            (4, 4)
        """
        self._check_live("unfreeze_weights")
        params = dict(self.model.named_parameters())
        for name in self._frozen_weights:
            params[name].requires_grad_(True)
        thawed, self._frozen_weights = len(self._frozen_weights), []
        return thawed

    @property
    def masks_frozen(self) -> bool:
        """Whether :meth:`freeze_masks` fixed the learned masks (``False`` without any)."""
        sources = [source for _, source in self._sources()]
        return bool(sources) and all(getattr(s, "frozen", False) for s in sources)

    def freeze_masks(self) -> int:
        """Fix every learned mask at its deterministic top-k: fine-tuning under the masks.

        From now on a training forward call uses the same mask as evaluation (no Gumbel
        draw) and the logits stop requiring gradients, so the masks stay exactly what
        they are while the weights train; :meth:`finalize` and the exports give that
        same mask. Saved in :meth:`state_dict`, so a restored pruner freezes them again.
        Call it once the sparsity ramp (if any) has ended, then :meth:`unfreeze_weights`
        after mask-only training, and build a new optimizer.

        Returns:
            The number of masks frozen.

        Raises:
            ValueError: while a ``sparsity_ramp`` is under way (the mask would keep more
                than k).

        Example:
            >>> import torch, dpp
            >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
            >>> pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
            >>> pruner.freeze_masks()
            2
            >>> x = torch.randn(3, 8)
            >>> torch.equal(model.train()(x), model.eval()(x))
            True
        """
        self._check_live("freeze_masks")
        if self.ramp < 1:
            raise ValueError(
                f"freeze_masks(): the sparsity ramp is at {self.ramp:.3f} of its target at "
                f"step {self._step}, so the masks keep more than k; freeze them once it ends"
            )
        frozen = 0
        for _, source in self._sources():
            source.frozen = True
            source.logits.requires_grad_(False)
            source.logits.grad = None
            frozen += 1
        return frozen

    def entropy(self) -> Tensor:
        """Sum over every group of the entropy of ``softmax(logits)`` (differentiable, nats)."""
        self._check_live("entropy")
        terms = [
            -(torch.softmax(s.logits, -1) * torch.log_softmax(s.logits, -1)).sum()
            for _, s in self._sources()
        ]
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).sum()

    def entropy_loss(self) -> Tensor:
        """``entropy_weight * entropy()``: add it to the loss to push groups to confident choices.

        Zero (and free) when ``entropy_weight`` is 0.
        """
        self._check_live("entropy_loss")
        if self.config.entropy_weight == 0:
            device = next(iter(self.logits()), torch.zeros(())).device
            return torch.zeros((), device=device)
        return self.config.entropy_weight * self.entropy()

    def rescale_for_sparsity(self) -> dict[str, float]:
        """Scale every pruned layer's weights by ``sqrt(n / k)``, for training from scratch.

        A layer that keeps k of its n inputs per output sees only k inputs: with the usual
        fan-in initialisation its output variance shrinks by ``k / n``, and deep networks
        pruned at 95% start with vanishing signals. Call this once, right after
        :func:`prune` on a freshly initialised model (not on pretrained weights), for
        ``weight``, ``block`` and ``kernel`` granularity; ``filter`` layers keep their full
        fan-in and are left as they are.

        Returns:
            ``{layer name: factor applied}``.
        """
        self._check_live("rescale_for_sparsity")
        factors = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                lay = layer.dpp_layout
                if lay is None or lay.granularity == "filter":
                    continue
                factor = (lay.n / lay.k) ** 0.5
                layer.weight.mul_(factor)
                factors[name] = factor
        return factors

    # ------------------------------------------------------------------ masks
    def masks(self) -> dict[str, Tensor]:
        """Deterministic masks (bool, shaped like each weight) of every pruned layer."""
        self._check_live("masks")
        out = {}
        for name, layer in self.layers.items():
            mask = layer.dpp_masks()
            if mask is not None:
                out[name] = mask
        return out

    def sparsity(self) -> dict[str, Any]:
        """Achieved weight sparsity of the deterministic masks.

        Returns:
            ``{"layers": {name: fraction of zero weights}, "total": fraction over the
            pruned layers' weights, "model": fraction over every weight of every layer DPP
            could prune (Linear, Conv and their kin), pruned or not}``.
        """
        self._check_live("sparsity")
        masks = self.masks()
        layers = {name: 1.0 - float(m.float().mean()) for name, m in masks.items()}
        pruned = sum(m.numel() - int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        all_weights = sum(
            m.weight.numel()
            for m in self.model.modules()
            if is_dpp_layer(m) or masked_class(type(m)) is not None
        )
        return {
            "layers": layers,
            "total": pruned / total if total else 0.0,
            "model": pruned / all_weights if all_weights else 0.0,
        }

    def parameter_counts(self) -> tuple[int, int]:
        """``(dense, kept)``: the model's parameters without pruning (logits not counted), and
        those left once the masks are applied (pruned weights, and at filter level their bias
        entries, removed)."""
        self._check_live("parameter_counts")
        logits = {id(p) for p in self.logits()}
        dense = sum(p.numel() for p in self.model.parameters() if id(p) not in logits)
        removed = 0
        for layer in self.layers.values():
            lay = layer.dpp_layout
            if lay is None:
                continue
            removed += layer.weight.numel() - layer.weight.numel() * lay.k // lay.n
            if lay.prunes_bias and layer.bias is not None:
                removed += layer.bias.numel() - lay.k
        return dense, dense - removed

    # ------------------------------------------------------------------ report
    def rows(self) -> list[LayerRow]:
        """One :class:`LayerRow` per touched layer (live or finalized), in layer order."""
        items: list[tuple[str, nn.Module, GroupLayout | None, QuantSpec | None]] = []
        if self._finalized is None:
            for name, layer in self.layers.items():
                items.append((name, layer, layer.dpp_layout, layer.dpp_quant))  # type: ignore[arg-type]
        else:
            for name, rec in self._finalized.items():
                items.append((name, self.model.get_submodule(name), rec.layout, rec.quant))
        rows = []
        for name, module, lay, quant in items:
            weights = module.weight.numel()  # type: ignore[union-attr]
            cls = getattr(module, "_dpp_dense_cls", type(module))
            rows.append(
                LayerRow(
                    layer=name,
                    type=cls.__name__,
                    granularity=None
                    if lay is None
                    else lay.granularity + (f"({lay.block_size})" if lay.block_size else ""),
                    groups=None if lay is None else lay.num_groups,
                    n=None if lay is None else lay.n,
                    k=None if lay is None else lay.k,
                    density=1.0 if lay is None else lay.k / lay.n,
                    bits=32 if quant is None else quant.bits,
                    weights=weights,
                    kept=weights if lay is None else weights * lay.k // lay.n,
                )
            )
        return rows

    def summary(self) -> str:
        """A table: layer, type, granularity, groups, n, k, density, bits, weights kept."""
        rows = self.rows()
        header = ["layer", "type", "granularity", "groups", "n", "k", "density", "bits", "kept"]

        def cell(value: int | str | None) -> str:
            return "-" if value is None else str(value)

        table = [
            [
                r.layer,
                r.type,
                cell(r.granularity),
                cell(r.groups),
                cell(r.n),
                cell(r.k),
                f"{r.density:.4f}",
                cell(r.bits),
                f"{r.kept:,}/{r.weights:,}",
            ]
            for r in rows
        ]
        weights = sum(r.weights for r in rows)
        kept = sum(r.kept for r in rows)
        density = kept / weights if weights else 1.0
        table.append(["total", "", "", "", "", "", f"{density:.4f}", "", f"{kept:,}/{weights:,}"])
        widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=True)]
        numeric = {3, 4, 5, 6, 7, 8}

        def fmt(cells: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in numeric else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        lines = [fmt(header), fmt(["-" * w for w in widths])]
        lines += [fmt(r) for r in table[:-1]]
        lines += [fmt(["-" * w for w in widths]), fmt(table[-1])]
        state = "finalized" if self._finalized is not None else f"step {self._step}"
        title = (
            f"DPP pruner ({state}; tau={self.temperature:.4g}, noise_scale={self.noise_scale:.4g})"
        )
        notes = []
        for why in dict.fromkeys(self.dense_by_default.values()):
            names = [n for n, w in self.dense_by_default.items() if w == why]
            notes.append(f"dense by default ({why}): {', '.join(names)}")
        return "\n".join([title, *lines, *notes])

    def __repr__(self) -> str:
        return self.summary()

    def copy(self) -> Pruner:
        """A pruner over a deep copy of the model (same config and schedule position).

        Useful to finalize or export a snapshot while training goes on with this one.
        """
        self._check_live("copy")
        import copy as _copy

        model = _copy.deepcopy(self.model)
        twin = Pruner(model, self.config, {name: model.get_submodule(name) for name in self.layers})
        twin._step = self._step
        twin._frozen_weights = list(self._frozen_weights)
        twin.batchnorm_links = dict(self.batchnorm_links)  # the hooks were copied with the model
        twin._apply_schedules()
        return twin

    # ------------------------------------------------------------------ finalize
    @property
    def finalized_layers(self) -> dict[str, FinalizedLayer]:
        """What :meth:`finalize` baked into each layer (empty before finalize)."""
        return dict(self._finalized or {})

    def finalize(self) -> dict[str, FinalizedLayer]:
        """Bake the deterministic masks (and quantization) into the weights, in place.

        Every masked layer is replaced by its plain class (``nn.Linear``, ``nn.ConvNd``, the
        user's subclass, ``Conv1D``) holding the same parameter objects (:mod:`dpp.bake`),
        with pruned weights (and, at filter level, their bias entries) set
        to zero and quantized weights set to exactly ``scale * code``. The model then computes
        what it computed in eval mode, and its state dict loads into the original dense
        architecture with ``strict=True``. The pruner cannot be used afterwards.

        Returns:
            ``{layer name: FinalizedLayer}`` with masks, codes and scales.
        """
        self._check_live("finalize")
        records = bake_in_place(self.model, self.layers)
        unguard_save_pretrained(self.model)
        self._finalized = records
        self.layers = {}
        return records


def _initial_logits(
    cfg: DPPConfig,
    name: str,
    layout: GroupLayout,
    module: nn.Module,
    stats: InputStats | None = None,
) -> Tensor | None:
    """Logits of a prior start (``logit_init`` other than ``"normal"``): the prior's scores
    (:func:`dpp.priors.prior_scores`) z-scored per group and scaled by ``logit_init_std``, so
    that the deterministic mask is the prior's top-k; ``"normal"``: ``None`` (the mask source
    draws N(0, std^2))."""
    if cfg.logit_init == "normal":
        return None
    scores = prior_scores(cfg.logit_init, name, module, layout, stats).float()
    if layout.n == 1:
        return torch.zeros_like(scores)
    mean = scores.mean(-1, keepdim=True)
    std = scores.std(-1, keepdim=True).clamp(min=1e-12)
    return (scores - mean) / std * cfg.logit_init_std


def _output_head_names(model: nn.Module) -> list[str]:
    """Names of the module that ``model.get_output_embeddings()`` returns (a language model's
    output head, e.g. Hugging Face's ``lm_head``), tied to the embeddings or not."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Module):
        return []
    return [name for name, m in model.named_modules(remove_duplicate=False) if m is head]


def _dense_by_default(model: nn.Module, names: list[str], cfg: DPPConfig) -> dict[str, str]:
    """Prunable layers left dense unless an ``include`` pattern names them: the output head,
    which SparseGPT, Wanda and MaskLLM all keep dense (it maps onto the vocabulary, and is
    often tied to the input embeddings)."""
    out = {
        name: "embeddings"
        for name, m in model.named_modules()
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    }
    for head in _output_head_names(model):
        explicit = cfg.include is not None and any(matches_pattern(head, p) for p in cfg.include)
        if head in names and not explicit:
            out[head] = "output head; name it in include=[...] to prune it"
    return out


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"dpp.prune expects a torch.nn.Module, got {type(model).__name__}")
    already = [n for n, m in model.named_modules() if is_dpp_layer(m)]
    if already:
        raise ValueError(
            f"the model is already pruned (DPP layers: {', '.join(already[:5])}"
            f"{', ...' if len(already) > 5 else ''}); finalize() the existing pruner first, "
            "or call dpp.prune on the original model"
        )


def _check_untied(model: nn.Module, plans: list[tuple[str, nn.Module, LayerSettings]]) -> None:
    """A weight tied to another module (e.g. an LM head and its embedding) cannot be masked:
    finalize() would write the mask into the other module's weight too."""
    owners: dict[int, set[str]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p_name, p in module.named_parameters(recurse=False):
            if p_name in ("weight", "bias"):
                owners.setdefault(id(p), set()).add(mod_name)
    aliases = module_aliases(model)
    for name, module, _ in plans:
        others = owners.get(id(module.weight), set()) - set(aliases.get(id(module), [name]))
        if others:
            raise ValueError(
                f"layer {name!r} shares its weight with {', '.join(sorted(others))} (tied "
                f"weights); DPP cannot mask or quantize a tied weight without changing the "
                f"other module: exclude it (exclude=[{name!r}]) or untie the weights"
            )


def select_layers(
    model: nn.Module, cfg: DPPConfig
) -> tuple[list[str], dict[str, str], dict[str, str], list[tuple[str, nn.Module]]]:
    """The layers ``cfg`` selects in ``model``, as :func:`prune` and :func:`dpp.oneshot`
    choose them: ``(prunable names, {name: why not} of the modules DPP cannot prune,
    {name: why} of the prunable ones left dense by default, [(name, module)] selected)``.

    Raises:
        ValueError: no prunable layer, a pattern matching none, or nothing selected.
    """
    candidates, unsupported = _candidates(model)
    if not candidates:
        detail = f":\n{_named(unsupported, model)}" if unsupported else ""
        raise ValueError(
            f"{type(model).__name__} has no layer DPP can prune: it prunes nn.Linear, "
            "nn.Conv1d/2d/3d, transformers' Conv1D and their subclasses that keep the parent's "
            f"forward{detail}"
        )
    names = [n for n, _ in candidates]
    unmatched = cfg.unmatched_patterns(names + list(unsupported))
    if unmatched:
        listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise ValueError(
            f"pattern(s) matching no prunable layer: {unmatched}. Patterns are globs on module "
            f"names as model.named_modules() prints them; the prunable layers are: {listed}"
        )
    kept_dense = _dense_by_default(model, names, cfg)
    selected = [(n, m) for n, m in candidates if cfg.selects(n) and n not in kept_dense]
    if not selected:
        raise ValueError(_nothing_selected(model, names, unsupported, cfg, kept_dense))
    return names, unsupported, kept_dense, selected


MaskSourceFactory = Callable[[str, nn.Module, GroupLayout], MaskSource]


def _check_calibration(
    cfg: DPPConfig, calibration_data: Any, mask_source: MaskSourceFactory | None
) -> None:
    """Calibration data and a data-driven prior come together, or not at all."""
    needs = cfg.logit_init in CALIBRATED_PRIORS
    if needs and mask_source is not None:
        raise ValueError(
            f"logit_init={cfg.logit_init!r} initialises DPP's logits, but a mask_source "
            "replaces them; drop one of the two"
        )
    if needs and calibration_data is None:
        raise ValueError(
            f"logit_init={cfg.logit_init!r} needs calibration inputs: pass "
            "dpp.prune(..., calibration_data=[batch, ...]) with batches the model is called on"
        )
    if calibration_data is not None and not needs:
        raise ValueError(
            f"calibration_data is used only by logit_init='wanda' or 'sparsegpt', but "
            f"logit_init={cfg.logit_init!r}; set logit_init or drop calibration_data"
        )
    if isinstance(calibration_data, (Tensor, dict)):
        raise TypeError(
            "calibration_data is an iterable of batches; wrap a single batch in a list: "
            "calibration_data=[batch]"
        )


def prune(
    model: nn.Module,
    config: DPPConfig | dict[str, Any] | None = None,
    *,
    mask_source: MaskSourceFactory | None = None,
    example_inputs: Tensor | tuple[Tensor, ...] | None = None,
    calibration_data: Iterable[Any] | None = None,
    **options: Any,
) -> Pruner:
    """Add Dynamic Probabilistic Pruning to ``model`` in place and return its :class:`Pruner`.

    Every selected ``nn.Linear`` and ``nn.Conv1d/2d/3d`` is replaced by a masked twin that
    keeps the same ``weight``/``bias`` parameters (same state-dict keys) and adds trainable
    logits ``<layer>.dpp.logits`` of shape ``[groups, n]``. In training mode every forward
    call draws one k-hot mask per group (shared by the whole batch); in eval mode the mask
    is the deterministic top-k of the logits. Create the optimizer after calling this, so it
    sees the logits (see :meth:`Pruner.param_groups`).

    Args:
        model: the model to prune (modified in place).
        config: a :class:`DPPConfig` or its dict; ``None`` builds one from ``options``.
        mask_source: optional ``(layer name, module, layout) -> MaskSource`` deciding the
            masks instead of DPP's learned logits (a fixed, magnitude or other scoring
            rule); the mechanics (layouts, quantization, finalize, export) stay the same.
        example_inputs: inputs the model can be called with. With ``filter`` granularity,
            one forward pass finds the BatchNorm that consumes each pruned layer's output, so
            that its pruned feature maps are zero after that BatchNorm too (see
            :mod:`dpp.batchnorm`); without them a BatchNorm turns a pruned map into its shift.
        calibration_data: model inputs for the data-driven priors ``logit_init="wanda"`` and
            ``"sparsegpt"``: an iterable of tensors (``model(x)``), tuples (``model(*x)``) or
            dicts (``model(**x)``, e.g. ``{"input_ids": ids}``). The dense model runs once
            over them, in eval mode without gradients, before any layer is replaced.
        **options: :class:`DPPConfig` fields, overriding those of ``config``.

    Returns:
        The :class:`Pruner`.

    Raises:
        ValueError/TypeError: naming the layer and what would be valid, for a bad k, density,
            block size or granularity, a pattern that matches no layer, or nothing to prune.

    Example:
        >>> import torch, dpp
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        >>> pruner = dpp.prune(model, granularity="weight", density=0.1,
        ...                    overrides={"2": {"density": 0.5}})
        >>> [row.k for row in pruner.rows()]
        [6, 16]
        >>> out = model(torch.randn(8, 64))  # training mode: a fresh mask per call
        >>> _ = model.eval(); pruner.finalize()["0"].mask.sum(1).unique().tolist()
        [6]
    """
    _check_model(model)
    if config is None:
        cfg = DPPConfig(**options)
    else:
        cfg = DPPConfig.from_dict(config) if isinstance(config, dict) else config
        if not isinstance(cfg, DPPConfig):
            raise TypeError(f"config must be a DPPConfig or a dict, got {type(config).__name__}")
        if options:
            cfg = cfg.replace(**options)

    names, unsupported, kept_dense, selected = select_layers(model, cfg)
    excluded = {n for n in names if not cfg.selects(n) or n in kept_dense}
    for pattern in cfg.overrides:
        hits = [n for n in names if n not in excluded and matches_pattern(n, pattern)]
        if not hits and not any(matches_pattern(n, pattern) for n in names):
            cannot = {n: why for n, why in unsupported.items() if matches_pattern(n, pattern)}
            raise ValueError(
                f"override {pattern!r} matches only modules DPP cannot prune:\n"
                f"{_named(cannot, model)}"
            )
        if not hits:
            raise ValueError(
                f"override {pattern!r} matches only excluded layers "
                f"({', '.join(n for n in names if matches_pattern(n, pattern))}); "
                "remove it or stop excluding those layers"
            )

    _warn_unsupported(model, unsupported, cfg)
    plans: list[tuple[str, nn.Module, LayerSettings]] = []
    for name, module in selected:
        settings = cfg.settings_for(name)
        if settings.touched:
            plans.append((name, module, settings))
    if not plans:
        raise ValueError(
            "nothing to prune: give a density or k (for all layers or through overrides), "
            "or weight_bits to quantize only"
        )

    # Validate everything before changing the model, so a bad setting leaves it untouched.
    _check_untied(model, plans)
    _check_calibration(cfg, calibration_data, mask_source)
    layouts: dict[str, GroupLayout | None] = {}
    for name, module, s in plans:
        layouts[name] = (
            GroupLayout.for_weight(
                canonical_weight(module).shape,
                s.granularity,
                k=s.k,
                density=s.density,
                block_size=s.block_size,
                is_conv=isinstance(module, nn.modules.conv._ConvNd),
                name=name,
            )
            if s.prune
            else None
        )

    stats: dict[str, InputStats] = {}
    if calibration_data is not None:
        learned = {n: m for n, m, _ in plans if layouts[n] is not None}
        hessian = learned if cfg.logit_init in HESSIAN_PRIORS else ()
        stats = calibrate(model, learned, calibration_data, hessian=hessian)
    module_names = module_aliases(model)
    in_fast_path = _fast_path_members(model)
    layers: dict[str, DPPLayer] = {}
    for name, module, s in plans:
        layout = layouts[name]
        source = None
        if layout is not None and mask_source is not None:
            source = mask_source(name, module, layout)
        elif layout is not None:
            source = DPPMask(
                layout,
                init_std=cfg.logit_init_std,
                init_logits=_initial_logits(cfg, name, layout, module, stats.get(name)),
                device=module.weight.device,
                dtype=getattr(torch, cfg.logit_dtype),
            )
        new = wrap(
            module, layout=layout, source=source, quant=s.quant, activation_bits=s.activation_bits
        )
        if id(module) in in_fast_path:
            new.register_forward_pre_hook(_keep_slow_path)
        for alias in module_names.get(id(module), [name]):
            set_module(model, alias, new)
        layers[name] = new
    pruner = Pruner(model, cfg, layers)
    pruner.dense_by_default = kept_dense
    guard_save_pretrained(model)
    has_filters = any(lay is not None and lay.granularity == "filter" for lay in layouts.values())
    if has_filters and example_inputs is not None:
        pruner.batchnorm_links = link_batchnorms(model, layers, example_inputs)
    elif has_filters and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        warnings.warn(
            "filter-level pruning of a model with BatchNorm: pass example_inputs to dpp.prune "
            "so that pruned feature maps stay zero after their BatchNorm (otherwise each "
            "becomes the BatchNorm's shift, a constant the next layer still sees)",
            stacklevel=2,
        )
    return pruner
