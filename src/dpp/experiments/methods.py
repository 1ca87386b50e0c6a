"""Training methods the trainer can run: dense, DPP, and (through ``baselines``) the others.

A method owns whatever the pruning needs during training; the trainer only calls these
hooks, so the training loop stays the same for every method:

- ``param_groups(lr=..., weight_decay=..., logit_lr=...)``: the optimizer's groups, each
  with a ``name`` (used to log learning rates);
- ``regularizer()``: a term added to the loss (DPP's entropy penalty);
- ``after_step()``: called after every optimizer step (DPP advances its schedules);
- ``start_epoch(epoch)`` / ``end_epoch(epoch)``;
- ``state_dict()`` / ``load_state_dict()``: saved in checkpoints for exact resume;
- ``pruner``: the :class:`dpp.Pruner` when the method uses one (masks, summary, finalize).

Every method registers itself with :func:`register_method` under its config name, with the
pydantic model of its ``[baseline]`` options (none for dense and DPP); the run config
validates ``method`` and those options against this registry. This module imports nothing
that imports it back (the run config type is for annotations only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pydantic
import torch
from torch import Tensor, nn

import dpp

from .data import dataset_info
from .registry import Registry

if TYPE_CHECKING:  # annotations only: the run config imports this module
    from .runconfig import RunConfig

__all__ = [
    "METHODS",
    "DPPMethod",
    "DenseMethod",
    "NoOptions",
    "TrainingMethod",
    "create_method",
    "register_method",
]


class NoOptions(pydantic.BaseModel):
    """The options of a method that has none: any key in ``[baseline]`` is an error."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


#: Config name -> method class; ``meta["options"]`` is the pydantic model of its options.
METHODS: Registry[type[TrainingMethod]] = Registry("method")


def register_method(name: str, options: type[pydantic.BaseModel] = NoOptions):
    """Class decorator: make a :class:`TrainingMethod` selectable as ``method = name``."""
    return METHODS.register(name, options=options)


class TrainingMethod:
    """Base class: a dense model trained as is."""

    name = "dense"
    pruner: dpp.Pruner | None = None
    # Whether the masks are sparse from the first step (then a run from scratch rescales the
    # pruned layers' initial weights for their smaller fan-in, see train.sparse_init).
    sparse_from_start = True

    def __init__(self, model: nn.Module, cfg: RunConfig, steps_per_epoch: int) -> None:
        self.model = model
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch

    def param_groups(
        self, *, logit_lr: float | None = None, **options: Any
    ) -> list[dict[str, Any]]:
        return [
            {
                "params": [p for p in self.model.parameters() if p.requires_grad],
                "name": "weights",
                **options,
            }
        ]

    def regularizer(self) -> Tensor | None:
        return None

    def after_step(self) -> None:
        pass

    def start_epoch(self, epoch: int) -> None:
        pass

    def end_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        """Values logged in every epoch record (temperature, noise scale, ...)."""
        return {}

    def count_parameters(self) -> tuple[int, int] | None:
        """(dense, kept) parameter counts when the method knows better than its pruner."""
        return None


@register_method("dense")
class DenseMethod(TrainingMethod):
    """No pruning: the reference every pruned result is compared with."""


@register_method("dpp")
class DPPMethod(TrainingMethod):
    """Dynamic Probabilistic Pruning with the run's ``pruning`` section."""

    name = "dpp"

    def __init__(self, model: nn.Module, cfg: RunConfig, steps_per_epoch: int) -> None:
        super().__init__(model, cfg, steps_per_epoch)
        self.pruner = dpp.prune(
            model, cfg.dpp_config(steps_per_epoch), example_inputs=example_inputs(cfg, model)
        )
        # With a sparsity ramp the masks start dense: no rescaling for a sparse fan-in.
        self.sparse_from_start = self.pruner.config.sparsity_ramp is None

    def param_groups(
        self, *, logit_lr: float | None = None, **options: Any
    ) -> list[dict[str, Any]]:
        assert self.pruner is not None
        weights, logits = self.pruner.param_groups(logit_lr=logit_lr, **options)
        return [{**weights, "name": "weights"}, {**logits, "name": "logits"}]

    def regularizer(self) -> Tensor | None:
        assert self.pruner is not None
        if self.pruner.config.entropy_weight == 0:
            return None
        return self.pruner.entropy_loss()

    def after_step(self) -> None:
        assert self.pruner is not None
        self.pruner.step()

    def state_dict(self) -> dict[str, Any]:
        assert self.pruner is not None
        return {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.pruner is not None
        self.pruner.load_state_dict(state["pruner"])

    def describe(self) -> dict[str, Any]:
        assert self.pruner is not None
        out = {"temperature": self.pruner.temperature, "noise_scale": self.pruner.noise_scale}
        if self.pruner.config.sparsity_ramp is not None:
            out["sparsity_ramp"] = self.pruner.ramp
        return out


def example_inputs(cfg: RunConfig, model: nn.Module) -> torch.Tensor:
    """A batch of two zero images of the run's dataset, on the model's device (for
    ``dpp.prune(..., example_inputs=...)``, which links filter masks to BatchNorms)."""
    device = next(model.parameters()).device
    return torch.zeros(2, *dataset_info(cfg.data.dataset).input_shape, device=device)


def create_method(cfg: RunConfig, model: nn.Module, steps_per_epoch: int) -> TrainingMethod:
    """The method named by ``cfg.method``, set up on ``model`` (which it may modify).

    The baselines register themselves when :mod:`dpp.experiments.baselines` is imported,
    as :mod:`dpp.experiments.runconfig` does.
    """
    return METHODS.get(cfg.method).obj(model, cfg, steps_per_epoch)
