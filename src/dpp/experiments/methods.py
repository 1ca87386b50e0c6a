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
pydantic model of its ``[baseline]`` options (none for dense and DPP), in
:data:`dpp.experiments.registry.METHODS`; the run config validates ``method`` and those
options against that registry without importing this module (which imports the run config
for annotations), and :mod:`dpp.experiments.builtin_methods` imports every module that
registers a method.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
import torch
from torch import Tensor, nn

import dpp
from dpp.granularity import GroupLayout
from dpp.layers import is_dpp_layer
from dpp.masks import MaskSource
from dpp.priors import CALIBRATED_PRIORS

from .data import dataset_info
from .errors import ConfigError
from .models import create_model
from .registry import METHODS

if TYPE_CHECKING:
    from .runconfig import RunConfig

__all__ = [
    "METHODS",
    "DPPMethod",
    "DenseMethod",
    "NoOptions",
    "TrainingMethod",
    "check_pruning",
    "create_method",
    "prune_with_config",
    "register_method",
]


class NoOptions(pydantic.BaseModel):
    """The options of a method that has none: any key in ``[baseline]`` is an error."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


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
    # How the method calls dpp.prune with the run's pruning section (check_pruning tries the
    # same call before any data is loaded): None (it does not), "logits" (DPP's learned
    # masks) or "mask_source" (masks of its own).
    prunes_with: ClassVar[Literal["logits", "mask_source"] | None] = None

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
    prunes_with = "logits"

    def __init__(self, model: nn.Module, cfg: RunConfig, steps_per_epoch: int) -> None:
        super().__init__(model, cfg, steps_per_epoch)
        self.pruner = prune_with_config(cfg, model, steps_per_epoch)
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

    Every built-in method is registered once :mod:`dpp.experiments` is imported
    (:mod:`dpp.experiments.builtin_methods`).
    """
    return METHODS.get(cfg.method).obj(model, cfg, steps_per_epoch)


# ----------------------------------------------------------------------------- dpp.prune
MaskSourceFactory = Callable[[str, nn.Module, GroupLayout], MaskSource]


def prune_with_config(
    cfg: RunConfig,
    model: nn.Module,
    steps_per_epoch: int,
    *,
    mask_source: MaskSourceFactory | None = None,
    link_batchnorms: bool = True,
) -> dpp.Pruner:
    """``dpp.prune`` of ``model`` with the run's ``pruning`` section (and, with
    ``link_batchnorms``, :func:`example_inputs`).

    ``dpp.prune`` checks the whole configuration against the model before it changes the
    model, so a ``ValueError``/``TypeError`` it raises before the first layer is built is
    the configuration's fault: a :class:`ConfigError` naming the ``pruning`` key(s) to blame,
    with ``dpp.prune``'s text on one line. One raised later is a bug and propagates.
    """
    built: list[str] = []

    def source(name: str, module: nn.Module, layout: GroupLayout) -> MaskSource:
        built.append(name)
        assert mask_source is not None
        return mask_source(name, module, layout)

    try:
        return dpp.prune(
            model,
            cfg.dpp_config(steps_per_epoch),
            mask_source=None if mask_source is None else source,
            example_inputs=example_inputs(cfg, model) if link_batchnorms else None,
        )
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError) or built or any(map(is_dpp_layer, model.modules())):
            raise  # not dpp.prune's verdict on the configuration
        raise ConfigError(_pruning_message(cfg, str(err), mask_source is not None)) from err


def check_pruning(cfg: RunConfig) -> None:
    """Try the run's ``dpp.prune`` call on its model built on the meta device (no memory,
    no data), so that a pruning section the model does not accept is a :class:`ConfigError`
    before any data is loaded; the run makes the same call on the real model later."""
    prunes_with = METHODS.get(cfg.method).obj.prunes_with
    if prunes_with is None:
        return
    text = _probe(cfg, cfg.pruning, mask_source=prunes_with == "mask_source")
    if text is not None:
        raise ConfigError(_pruning_message(cfg, text, prunes_with == "mask_source"))


class _Checked(Exception):
    """Raised by the placeholder mask source of a probe: dpp.prune accepted the config."""


def _checked(name: str, module: nn.Module, layout: GroupLayout) -> MaskSource:
    raise _Checked


def _probe(cfg: RunConfig, pruning: dict[str, Any], *, mask_source: bool) -> str | None:
    """What ``dpp.prune`` says of ``pruning`` as the run's pruning section, on the run's
    model built on the meta device (no memory, no data), or ``None`` when it accepts it."""
    info = dataset_info(cfg.data.dataset)
    with torch.device("meta"):
        model = create_model(
            cfg.model.name, info.num_classes, input_shape=info.input_shape, **cfg.model.kwargs
        )
    try:
        config = cfg.model_copy(update={"pruning": pruning}).dpp_config(1)
    except ConfigError as err:
        return str(err)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the real call warns, once
            dpp.prune(model, config, mask_source=_checked if mask_source else None)
    except _Checked:
        return None
    except (ValueError, TypeError) as err:
        if any(map(is_dpp_layer, model.modules())):
            raise  # raised after the configuration was accepted: a bug
        return str(err)
    return None


def _pruning_message(cfg: RunConfig, text: str, mask_source: bool) -> str:
    """``pruning.KEY: TEXT`` on one line. The keys to blame are found by trying the pruning
    section without each key on the meta device: those without which ``dpp.prune`` accepts
    it, else those without which it says something else."""
    said = _probe(cfg, cfg.pruning, mask_source=mask_source)
    accepted, changed = [], []
    for key in cfg.pruning if said is not None else ():
        without = {k: v for k, v in cfg.pruning.items() if k != key}
        now = _probe(cfg, without, mask_source=mask_source)
        if now != said:
            (accepted if now is None else changed).append(f"pruning.{key}")
    message = f"{', '.join(accepted or changed) or 'pruning'}: {_one_line(text)}"
    if cfg.pruning.get("logit_init") in CALIBRATED_PRIORS and "calibration" in text:
        message += (
            "; dpp train has no calibration data for logit_init = "
            f"{cfg.pruning['logit_init']!r}: use 'magnitude' or 'normal'"
        )
    return message


def _one_line(text: str) -> str:
    """A multi-line message on one line (a list after a colon joined with ``; ``)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    out = lines[0] if lines else ""
    for line in lines[1:]:
        out += (" " if out.endswith(":") else "; ") + line
    return out
