"""The recommended optimizer of a pruned model: AdamW for the weights, compact Adam for the logits.

DPP's logits are as many as the pruned weights. Plain Adam spends 8 bytes of float32
moments on each, on top of the logit and its gradient; at 7B pruned weights that is more
memory than any single GPU has. :class:`DPPAdam` keeps, for the parameter groups marked
``compact`` (the logits):

* the first moment in bfloat16 (2 bytes per logit, rounded to nearest);
* one float32 second moment per *row* of the logits (a group of ``n`` candidates shares
  it: ``4 / n`` bytes per logit, 1 byte at 2:4), the mean of the squared gradient over the
  row; a row's candidates compete for the same k places, so one step size per row keeps
  their relative updates those of Adam's first moment;
* 16-bit logits (``DPPConfig.logit_dtype``) updated in float32 and written back with
  **stochastic rounding** (unbiased: the expected stored value is the float32 result), so
  that updates smaller than a bfloat16 step are not lost. Its random stream is a
  ``torch.Generator`` per device whose state is part of :meth:`DPPAdam.state_dict`, so a
  resumed run continues bit-identically.

Other groups get exactly AdamW (``torch.optim.adam.adam`` with decoupled weight decay, the
state keys of ``torch.optim.AdamW``).

Example:
    >>> import torch, dpp
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 2))
    >>> pruner = dpp.prune(model, granularity="block", block_size=4, k=2,
    ...                    logit_dtype="bfloat16")
    >>> opt = pruner.optimizer(lr=1e-3, logit_lr=1e-2)
    >>> [g["compact"] for g in opt.param_groups]
    [False, True]
    >>> model(torch.randn(4, 16)).sum().backward(); opt.step()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam

__all__ = ["DPPAdam", "stochastic_round"]

_SR_DTYPES = (torch.bfloat16, torch.float16)


def _random_bits16(numel: int, device: torch.device, generator: torch.Generator) -> Tensor:
    """``numel`` uniform 16-bit integers in ``[0, 65536)`` as int32.

    Three per 64-bit draw (its low 48 bits; int64 ``random_`` leaves the top bit 0): a
    third of the generator calls of one draw per value.
    """
    words = torch.empty((numel + 2) // 3, dtype=torch.int64, device=device)
    words.random_(generator=generator)
    chunks = words.view(torch.int16).view(-1, 4)[:, :3]
    return chunks.reshape(-1)[:numel].to(torch.int32).bitwise_and_(0xFFFF)


def stochastic_round(
    x: Tensor, dtype: torch.dtype, generator: torch.Generator | None = None
) -> Tensor:
    """Round float32 ``x`` to ``dtype`` (bfloat16 or float16) stochastically, unbiased.

    Each value goes to one of its two neighbours in ``dtype`` with probabilities that make
    the expected result ``x`` itself (values already representable stay exact).

    Args:
        x: float32 tensor, any shape.
        dtype: ``torch.bfloat16`` or ``torch.float16``.
        generator: random stream (default: a fresh one from torch's global RNG).

    Returns:
        Tensor of ``x.shape`` and ``dtype``.
    """
    if dtype not in _SR_DTYPES:
        raise ValueError(f"stochastic rounding targets bfloat16 or float16, got {dtype}")
    x = x.float().contiguous()
    if generator is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        generator = torch.Generator(device=x.device).manual_seed(seed)
    if dtype == torch.bfloat16:
        # bfloat16 is the top half of a float32: add 16 random bits below it, truncate.
        # The magnitude rounds up with probability (its dropped bits) / 2^16.
        # Infinities and NaNs stay what they are (their low bits only change a NaN's
        # payload); the largest finite values may round up to infinity.
        bits = x.view(torch.int32).add(_random_bits16(x.numel(), x.device, generator).view(x.shape))
        return bits.bitwise_right_shift_(16).to(torch.int16).view(torch.bfloat16)
    # float16: between the two neighbours lo <= x <= hi, hi with probability (x-lo)/(hi-lo).
    near = x.to(torch.float16)
    near32 = near.float()
    toward = torch.where(near32 > x, -torch.inf, torch.inf).to(torch.float16)
    other = torch.nextafter(near, toward)
    other32 = other.float()
    gap = (other32 - near32).abs_()
    p_other = ((x - near32).abs_() / gap).nan_to_num_(0.0)
    u = torch.rand(x.shape, device=x.device, generator=generator)
    return torch.where(u < p_other, other, near)


class DPPAdam(torch.optim.Optimizer):
    """AdamW, with compact state for the parameter groups marked ``compact=True`` (logits).

    A compact group's parameters have candidates along their last dimension (``[groups,
    n]`` logits); each keeps a bfloat16 first moment ``exp_avg`` (shaped like it), a
    float32 second moment ``exp_avg_sq`` ``[groups, 1]`` shared by the row, and is written
    back with stochastic rounding when stored in 16 bits. Other groups are plain AdamW.

    Args:
        params: parameters or parameter groups; a group may set ``compact``, ``lr``,
            ``betas``, ``eps``, ``weight_decay``.
        lr: learning rate.
        betas: Adam's ``(beta1, beta2)``.
        eps: added to the root of the second moment.
        weight_decay: decoupled weight decay (AdamW).
        compact: the default of the groups' ``compact`` key.
        seed: seed of the stochastic-rounding stream (default: drawn from torch's global RNG).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        compact: bool = False,
        seed: int | None = None,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "compact": compact,
        }
        super().__init__(params, defaults)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self._seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = self._generators[key] = torch.Generator(device=device).manual_seed(self._seed)
        return gen

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["compact"]:
                self._compact_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _adamw_step(self, group: dict[str, Any]) -> None:
        params, grads, avgs, sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            avgs.append(state["exp_avg"])
            sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        adam(
            params,
            grads,
            avgs,
            sqs,
            [],
            steps,
            decoupled_weight_decay=True,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )

    def _compact_step(self, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16)
                rows = (*p.shape[:-1], 1) if p.dim() else (1,)
                state["exp_avg_sq"] = torch.zeros(rows, dtype=torch.float32, device=p.device)
            state["step"] += 1
            t = float(state["step"])
            g = p.grad.float()
            m = state["exp_avg"].float().lerp_(g, 1.0 - beta1)
            state["exp_avg"].copy_(m)
            v = state["exp_avg_sq"]
            sq = g.square() if g is p.grad else g.square_()  # p.grad itself stays as it is
            sq = sq.mean(-1, keepdim=True) if p.dim() else sq.reshape(1)
            v.mul_(beta2).add_(sq, alpha=1.0 - beta2)
            denom = v.div(1.0 - beta2**t).sqrt_().add_(eps)
            step_size = lr / (1.0 - beta1**t)
            update = m.div_(denom.reshape(denom.shape if p.dim() else ())).mul_(step_size)
            if p.dtype in _SR_DTYPES:
                new = p.float()
                if decay:
                    new.mul_(1.0 - lr * decay)
                new.sub_(update)
                p.copy_(stochastic_round(new, p.dtype, self._generator(p.device)))
            else:
                if decay:
                    p.mul_(1.0 - lr * decay)
                p.sub_(update.to(p.dtype))

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state, plus ``"rounding"``: the seed and generator states of the
        stochastic rounding (so that resuming continues the same random stream)."""
        out = super().state_dict()
        out["rounding"] = {
            "seed": self._seed,
            "generators": {k: g.get_state() for k, g in self._generators.items()},
        }
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the rounding stream included)."""
        state_dict = dict(state_dict)
        rounding = state_dict.pop("rounding", None)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        saved_state = state_dict["state"]
        super().load_state_dict(state_dict)
        # Optimizer.load_state_dict casts floating state to the parameter's dtype; the
        # compact moments keep their own (bfloat16 / float32), copied exactly.
        params = [p for g in self.param_groups for p in g["params"]]
        compact = {id(p) for g in self.param_groups if g["compact"] for p in g["params"]}
        for pid, p in zip(saved_ids, params, strict=True):
            if id(p) in compact and pid in saved_state:
                for key in ("exp_avg", "exp_avg_sq"):
                    value = saved_state[pid][key]
                    self.state[p][key] = value.to(device=p.device, copy=True)
        self._generators = {}
        if rounding is not None:
            self._seed = int(rounding["seed"])
            for key, gen_state in rounding["generators"].items():
                gen = torch.Generator(device=key)
                gen.set_state(gen_state)
                self._generators[key] = gen
