"""Hugging Face ``transformers`` integration: a ``TrainerCallback`` that drives the pruner.

``transformers.Trainer`` keeps its own loop; :class:`DPPCallback` adds what DPP needs to it:
``pruner.step()`` after every optimizer step (the temperature, noise and sparsity-ramp
schedules count optimizer steps), and, at every logging step, the sparsity, the schedule
values and the fraction of kept mask entries that changed since the last log
(:func:`dpp.metrics.mask_flips`). Build the optimizer from :meth:`dpp.Pruner.param_groups`
and pass it to the Trainer (``optimizers=(optimizer, None)``), so that the logits get
their own learning rate. Importing this module imports transformers (``pip install
'dpp[hf]'``); the rest of dpp never does.

Example (not run here)::

    pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-4, logit_lr=1e-2))
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=train,
        optimizers=(optimizer, None), callbacks=[DPPCallback(pruner)],
    )
    trainer.train()
    pruner.finalize()
    model.save_pretrained("pruned")
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .metrics import mask_flips
from .pruner import Pruner

__all__ = ["DPPCallback"]


class DPPCallback(TrainerCallback):
    """Steps the pruner's schedules with the Trainer and logs DPP's metrics.

    Args:
        pruner: the :class:`~dpp.Pruner` of the model the Trainer trains.
        log_flips: also log ``dpp/mask_flips`` (the deterministic masks are compared with
            those of the previous log; costs one top-k per layer per log).

    Logged keys (added to the Trainer's ``logs`` and ``state.log_history``):
        ``dpp/sparsity``, ``dpp/temperature``, ``dpp/noise_scale``, ``dpp/step`` and
        ``dpp/mask_flips``.

    Example:
        >>> import torch, dpp
        >>> from dpp.hf import DPPCallback
        >>> callback = DPPCallback(dpp.prune(torch.nn.Sequential(torch.nn.Linear(8, 4)), k=2))
        >>> callback.on_step_end(None, None, None)  # what the Trainer calls after a step
        >>> callback.pruner.current_step, callback.metrics()["dpp/sparsity"]
        (1, 0.75)
    """

    def __init__(self, pruner: Pruner, *, log_flips: bool = True) -> None:
        if not isinstance(pruner, Pruner):
            raise TypeError(f"DPPCallback expects a dpp.Pruner, got {type(pruner).__name__}")
        self.pruner = pruner
        self.log_flips = log_flips
        self._last_masks: dict[str, Any] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Resuming from a Trainer checkpoint: bring the schedules to its step."""
        if state.global_step and self.pruner.current_step != state.global_step:
            self.pruner.load_state_dict({"step": state.global_step})
        if self.log_flips:
            self._last_masks = self.pruner.masks()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """One optimizer step done: advance the temperature, noise and ramp schedules."""
        self.pruner.step()

    def metrics(self) -> dict[str, float]:
        """The values :meth:`on_log` adds, computed now."""
        out = {
            "dpp/sparsity": float(self.pruner.sparsity()["total"]),
            "dpp/temperature": float(self.pruner.temperature),
            "dpp/noise_scale": float(self.pruner.noise_scale),
            "dpp/step": float(self.pruner.current_step),
        }
        if self.log_flips:
            masks = self.pruner.masks()
            if self._last_masks is not None:
                out["dpp/mask_flips"] = mask_flips(self._last_masks, masks)["total"]
            self._last_masks = masks
        return out

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        """Add DPP's metrics to this log entry."""
        extra = self.metrics()
        if logs is not None:
            logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)
