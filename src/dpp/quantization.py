"""Weight and activation fake quantization trained jointly with the masks (method.md s.5).

Uniform symmetric b-bit (b = 2..8): ``q = round(clip(w / s, -L, L))`` with
``L = 2^(b-1) - 1`` and ``s = max|w| / L`` over the kept weights (per output channel or per
tensor); forward ``s * q``, backward straight-through, zero outside the clip range.
Binary: ``s * sign(w)`` with ``s`` the mean magnitude of the kept weights, backward
straight-through inside the hard-tanh window ``|w| <= 1``. With a mask, pruned weights
are zero before quantization, so binary weights become ternary ``{-s, 0, +s}``.

No dependency on ``torch.ao.quantization``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "QUANT_SCALES",
    "ActivationQuantizer",
    "QuantSpec",
    "fake_quantize",
    "fake_quantize_input",
    "quantize_weight",
]

QUANT_SCALES = ("channel", "tensor")
VALID_BITS = (2, 3, 4, 5, 6, 7, 8)


@dataclass(frozen=True)
class QuantSpec:
    """How one layer's weights are quantized.

    Args:
        bits: an int from 2 to 8, or ``"binary"``.
        scale: ``"channel"`` (one scale per output channel) or ``"tensor"``.
    """

    bits: int | str
    scale: str = "channel"

    def __post_init__(self) -> None:
        if self.bits != "binary" and (
            isinstance(self.bits, bool)
            or not isinstance(self.bits, int)
            or self.bits not in VALID_BITS
        ):
            raise ValueError(
                f"weight bits must be an int from 2 to 8 or 'binary', got {self.bits!r} "
                "(for 1 bit use 'binary'; for float weights leave bits unset)"
            )
        if self.scale not in QUANT_SCALES:
            raise ValueError(
                f"quantization scale must be one of {QUANT_SCALES}, got {self.scale!r}"
            )

    @property
    def binary(self) -> bool:
        return self.bits == "binary"

    @property
    def levels(self) -> int:
        """Largest code magnitude L: codes lie in ``[-L, L]`` (1 for binary)."""
        return 1 if self.binary else 2 ** (int(self.bits) - 1) - 1

    @property
    def code_bits(self) -> int:
        """Bits one stored code takes (binary weights of a mask need only their sign)."""
        return 1 if self.binary else int(self.bits)


def _reduce_dims(w: Tensor, spec: QuantSpec) -> tuple[int, ...]:
    return tuple(range(1, w.dim())) if spec.scale == "channel" else tuple(range(w.dim()))


def quant_scale(w: Tensor, spec: QuantSpec, kept: Tensor | None = None) -> Tensor:
    """Scale ``s`` broadcastable onto ``w``; only kept weights (``kept`` > 0) set it.

    ``w`` must already be zero where pruned. A channel with no kept weight gets ``s = 1``.
    """
    w = w.detach()
    dims = _reduce_dims(w, spec)
    if spec.binary:
        total = w.abs().sum(dim=dims, keepdim=True)
        if kept is None:
            count = torch.full_like(total, w[0].numel() if spec.scale == "channel" else w.numel())
        else:
            count = kept.detach().to(w.dtype).expand_as(w).sum(dim=dims, keepdim=True)
        s = total / count.clamp(min=1)
    else:
        s = w.abs().amax(dim=dims, keepdim=True) / spec.levels
    return torch.where(s > 0, s, torch.ones_like(s))


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, s: Tensor, levels: int, binary: bool) -> Tensor:  # type: ignore[override]
        if binary:
            ctx.save_for_backward(w.abs() <= 1)
            return s * torch.sign(w)
        r = w / s
        # With s = max|w| / L the largest weight lands on |r| = L only up to rounding
        # (w / (max|w| / L) can be L + 1 ulp); a few ulps of slack keep its gradient.
        slack = levels * 4 * torch.finfo(r.dtype).eps
        ctx.save_for_backward(r.abs() <= levels + slack)
        return s * torch.round(r).clamp(-levels, levels)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quantize(w: Tensor, spec: QuantSpec, kept: Tensor | None = None) -> Tensor:
    """Quantize-dequantize ``w`` (already masked) with a straight-through gradient.

    Args:
        w: weight tensor ``[C_out, ...]``, zero where pruned.
        spec: bits and scale granularity.
        kept: optional mask broadcastable onto ``w``; only kept weights set the scale.

    Returns:
        Tensor like ``w`` whose values are exactly ``scale * code`` of :func:`quantize_weight`.
    """
    s = quant_scale(w, spec, kept)
    return _FakeQuant.apply(w, s, spec.levels, spec.binary)


def quantize_weight(
    w: Tensor, spec: QuantSpec, kept: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Integer codes and scales of ``w`` (already masked): ``w_q = scale * codes``.

    Returns:
        ``(codes, scale)``: ``codes`` int8 like ``w`` with values in ``[-L, L]``
        (binary: ``{-1, 0, 1}``); ``scale`` float ``[C_out, 1, ...]`` (channel) or
        ``[1, 1, ...]`` (tensor).
    """
    w = w.detach()
    s = quant_scale(w, spec, kept)
    codes = torch.sign(w) if spec.binary else torch.round(w / s).clamp(-spec.levels, spec.levels)
    return codes.to(torch.int8), s


def fake_quantize_input(x: Tensor, scale: Tensor, bits: int = 8) -> Tensor:
    """Symmetric ``bits``-bit fake quantization of an input with a fixed 0-d ``scale``.

    ``scale * round(x / scale)`` clipped to ``[-L, L]`` codes (``L = 2^(bits-1) - 1``), with a
    straight-through gradient inside the range.

    Example:
        >>> import torch
        >>> fake_quantize_input(torch.tensor([0.26, -3.0, 0.5]), torch.tensor(0.01)).tolist()
        [0.25999999046325684, -1.2699999809265137, 0.5]
    """
    levels = 2 ** (bits - 1) - 1
    s = scale.to(device=x.device, dtype=x.dtype)
    return _FakeQuant.apply(x, s, levels, False)


class ActivationQuantizer(nn.Module):
    """Symmetric 8-bit fake quantization of a layer's input with a running max-abs range.

    In training mode the range follows an exponential moving average (``momentum``) of the
    batch max-abs; in eval mode it is fixed. Gradients pass straight through inside the
    range and are zero outside it.
    """

    def __init__(self, bits: int = 8, momentum: float = 0.1) -> None:
        super().__init__()
        if bits != 8:
            raise ValueError(f"activation quantization supports 8 bits only, got {bits}")
        self.bits = bits
        self.momentum = momentum
        self.register_buffer("running_max", torch.zeros(()))

    @property
    def levels(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def scale(self) -> Tensor:
        s = self.running_max / self.levels
        return torch.where(s > 0, s, torch.ones_like(s))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                batch_max = x.detach().abs().amax().to(self.running_max.dtype)
                ema = self.running_max + self.momentum * (batch_max - self.running_max)
                self.running_max.copy_(torch.where(self.running_max > 0, ema, batch_max))
        return fake_quantize_input(x, self.scale(), self.bits)
