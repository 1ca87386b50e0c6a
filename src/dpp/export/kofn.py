"""k-of-n inference on CPU: a Linear layer computed from its kept weights and their indices.

:class:`KOfNLinear` stores ``values [out, r]`` and absolute column ``indices [out, r]`` (``r``
kept weights per output unit: ``k`` at ``weight`` granularity, ``k * in / m`` at ``block``
granularity) and computes ``y[b, o] = bias[o] + sum_j values[o, j] * x[b, indices[o, j]]``.
Several pure-torch formulations of that sum are available; ``method="auto"`` picks, per call,
the one measured fastest for the batch size (``benchmarks/bench_kofn.py``, docs/deploy.md):

``csr``
    ``torch.mv`` / ``@`` with a ``torch.sparse_csr_tensor`` built from the k-of-n layout: the
    row pointers are implicit (``r`` per row) and the column indices are ``int32`` (a
    ``weight.to_sparse_csr()`` of the masked dense weight has ``int64`` ones).
``embedding_bag``
    ``F.embedding_bag`` over the table ``x.T`` (``[in, B]``) with ``per_sample_weights``:
    gather, multiply and sum fused in one kernel.
``gather``
    ``x.index_select(-1, indices)`` to ``[B, out, r]``, then ``(... * values).sum(-1)``.
``dense``
    ``F.linear`` with the masked dense weight, rebuilt once and cached (this gives back the
    memory saving; for large batches at high density).

:func:`convert_kofn` replaces the weight- and block-pruned ``nn.Linear`` layers of a pruned
model (live, finalized through its Pruner, or a packed file) by :class:`KOfNLinear`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..bake import bake
from ..granularity import GroupLayout
from ..layers import is_hf_conv1d
from ..modeltools import replace_module
from ..pruner import Pruner
from ..quantization import fake_quantize_input
from .packed import PackedLayer, load_packed, packed_layer, read_packed

__all__ = ["METHODS", "KOfNLinear", "convert_kofn", "kofn_columns"]

METHODS = ("auto", "csr", "embedding_bag", "gather", "dense")
AUTO_CSR_MAX_BATCH = 16
"""``method="auto"`` uses ``csr`` up to this many rows, ``embedding_bag`` above."""


def kofn_columns(layout: GroupLayout, indices: Tensor) -> Tensor:
    """Absolute column indices ``[out, r]`` of a Linear layer's ``[G, k]`` group indices.

    Args:
        layout: a ``weight`` or ``block`` layout of a Linear weight ``[out, in]``.
        indices: ``[num_groups, k]`` kept candidates per group.

    Returns:
        ``int64 [out, r]``: ``r = k`` (weight) or ``k * in / m`` (block; the index ``j`` of
        block ``b`` becomes column ``b * m + j``), sorted ascending within each row.
    """
    out = layout.weight_shape[0]
    idx = indices.long()
    if layout.granularity == "weight":
        return idx.reshape(out, layout.k)
    if layout.granularity == "block":
        m = layout.n
        blocks = layout.weight_shape[1] // m
        base = (torch.arange(blocks, device=idx.device) * m).view(1, blocks, 1)
        return (idx.reshape(out, blocks, layout.k) + base).reshape(out, blocks * layout.k)
    raise ValueError(
        f"k-of-n inference needs 'weight' or 'block' granularity, got {layout.granularity!r}"
    )


class KOfNLinear(nn.Module):
    """A Linear layer stored and computed as ``r`` kept weights per output unit.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        values: float ``[out_features, r]`` kept weights of every output unit.
        indices: integer ``[out_features, r]`` input columns of ``values``, in ``[0, in)``.
        bias: optional ``[out_features]``.
        method: ``"auto"`` (default: the fastest measured for the batch size), ``"csr"``,
            ``"embedding_bag"``, ``"gather"`` or ``"dense"``.
        input_scale: optional fixed 8-bit scale (0-d) to fake-quantize the input with, as a
            finalized activation-quantized layer does.

    Shapes:
        input ``[*, in_features]`` (including 1-D ``[in_features]``) ->
        output ``[*, out_features]``.

    Inference only: ``values`` and ``bias`` are buffers, not parameters.

    Example:
        >>> import torch
        >>> from dpp.export import KOfNLinear
        >>> dense = torch.nn.Linear(8, 3)
        >>> mask = torch.rand(3, 8).argsort(-1) < 2            # keep 2 of 8 per row
        >>> layer = KOfNLinear.from_dense(dense.weight * mask, mask, dense.bias)
        >>> x = torch.randn(5, 8)
        >>> torch.allclose(layer(x), torch.nn.functional.linear(x, dense.weight * mask,
        ...                                                     dense.bias), atol=1e-6)
        True
    """

    values: Tensor
    indices: Tensor
    bias: Tensor | None
    input_scale: Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        values: Tensor,
        indices: Tensor,
        bias: Tensor | None = None,
        *,
        method: str = "auto",
        input_scale: Tensor | None = None,
    ) -> None:
        super().__init__()
        if values.dim() != 2 or tuple(indices.shape) != tuple(values.shape):
            raise ValueError(
                f"values and indices must both be [out_features, r], got "
                f"{list(values.shape)} and {list(indices.shape)}"
            )
        if values.shape[0] != out_features:
            raise ValueError(f"values has {values.shape[0]} rows, expected {out_features}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= in_features):
            raise ValueError(f"indices must lie in [0, in_features={in_features})")
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"bias must be [{out_features}], got {list(bias.shape)}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.method = method
        self.register_buffer("values", values.detach().contiguous().clone())
        self.register_buffer("indices", indices.detach().to(torch.int32).contiguous().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer(
            "input_scale", None if input_scale is None else input_scale.detach().clone()
        )
        self._cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dense(
        cls, weight: Tensor, mask: Tensor, bias: Tensor | None = None, **kwargs: Any
    ) -> KOfNLinear:
        """Build from a dense ``weight [out, in]`` and a bool ``mask`` keeping the same number
        of weights in every row (the mask, not zero weights, says what is kept)."""
        mask = mask.to(torch.bool).expand_as(weight)
        counts = mask.sum(-1)
        r = int(counts[0]) if counts.numel() else 0
        if not bool((counts == r).all()):
            raise ValueError(
                f"every row must keep the same number of weights, got {counts.unique().tolist()}"
            )
        idx = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :r]
        values = weight.detach().gather(1, idx)
        return cls(weight.shape[1], weight.shape[0], values, idx, bias, **kwargs)

    @classmethod
    def from_packed(
        cls, layer: PackedLayer, bias: Tensor | None = None, **kwargs: Any
    ) -> KOfNLinear:
        """Build from a :class:`~dpp.export.packed.PackedLayer` of a Linear-like weight
        ``[out, in]`` (``weight`` or ``block`` granularity; quantized values become
        ``scale * code``)."""
        if layer.layout is None or len(layer.weight_shape) != 2:
            raise ValueError(f"layer {layer.name!r} is not a pruned Linear layer")
        lay = layer.layout
        cols = kofn_columns(lay, layer.indices)  # type: ignore[arg-type]
        kept = layer.kept_values
        assert kept is not None
        out, in_features = lay.weight_shape
        values = kept.reshape(out, -1).to(layer.dtype)
        return cls(
            in_features, out, values, cols, bias, input_scale=layer.activation_scale, **kwargs
        )

    # ------------------------------------------------------------------ properties
    @property
    def kept_per_row(self) -> int:
        return self.values.shape[1]

    @property
    def density(self) -> float:
        return self.kept_per_row / self.in_features if self.in_features else 1.0

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"kept_per_row={self.kept_per_row}, bias={self.bias is not None}, "
            f"method={self.method!r}"
        )

    def dense_weight(self) -> Tensor:
        """The equivalent dense weight ``[out, in]`` (zeros where pruned)."""
        w = torch.zeros(
            self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device
        )
        return w.scatter_(1, self.indices.long(), self.values)

    # ------------------------------------------------------------------ formulations
    def _derived(self, name: str) -> Tensor:
        """Cached helpers (flat indices, offsets, the CSR matrix), rebuilt when buffers move."""
        # New buffers (.to(), assignment) have a new data pointer; in-place updates
        # (load_state_dict) bump the version counter.
        v, i = self.values, self.indices
        key = (v.data_ptr(), v._version, v.dtype, i.data_ptr(), i._version)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        out, r = self.values.shape
        dev = self.values.device
        if name == "flat":
            value = self.indices.reshape(-1)
        elif name == "offsets":
            value = torch.arange(0, out * r, r, dtype=torch.int32, device=dev)
        elif name == "csr":
            crow = torch.arange(0, out * r + 1, r, dtype=torch.int32, device=dev)
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                value = torch.sparse_csr_tensor(
                    crow,
                    self.indices.reshape(-1),
                    self.values.reshape(-1),
                    (out, self.in_features),
                )
        elif name == "dense":
            value = self.dense_weight()
        else:  # pragma: no cover
            raise KeyError(name)
        self._cache[name] = (key, value)
        return value

    def _choose(self, batch: int) -> str:
        """The formulation for a batch: ``method``, or the measured fastest when ``"auto"``."""
        if self.method != "auto":
            return self.method
        # benchmarks/bench_kofn.py (docs/deploy.md): the CSR kernel wins up to a few rows,
        # embedding_bag (x.T as the table) for larger batches.
        return "csr" if batch <= AUTO_CSR_MAX_BATCH else "embedding_bag"

    def forward(self, input: Tensor) -> Tensor:
        x = input
        if self.input_scale is not None:
            x = fake_quantize_input(x, self.input_scale)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"KOfNLinear expects inputs [..., {self.in_features}], got {list(x.shape)}"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        batch = x2.shape[0]
        method = self._choose(batch)
        if batch == 0:
            y = x2.new_zeros(0, self.out_features)
        elif method == "csr":
            csr = self._derived("csr")
            y = torch.mv(csr, x2[0]).unsqueeze(0) if batch == 1 else (csr @ x2.t()).t()
        elif method == "embedding_bag":
            y = F.embedding_bag(
                self._derived("flat"),
                x2.t().contiguous(),
                self._derived("offsets"),
                mode="sum",
                per_sample_weights=self.values.reshape(-1),
            ).t()
        elif method == "gather":
            out, r = self.values.shape
            g = x2.index_select(1, self._derived("flat")).view(batch, out, r)
            y = (g * self.values).sum(-1)
        else:
            y = F.linear(x2, self._derived("dense"))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


# ---------------------------------------------------------------------------- conversion
def _eligible(layout: GroupLayout | None, module: nn.Module) -> bool:
    """A weight- or block-pruned Linear (a subclass, or transformers' Conv1D, too)."""
    linear = isinstance(module, nn.Linear) or is_hf_conv1d(type(module))
    return linear and layout is not None and layout.granularity in ("weight", "block")


def convert_kofn(
    source: nn.Module | Pruner | str | os.PathLike,
    model: nn.Module | None = None,
    *,
    method: str = "auto",
    max_density: float = 1.0,
) -> nn.Module:
    """Replace the weight/block-pruned ``nn.Linear`` layers by :class:`KOfNLinear`.

    Args:
        source: one of

            * a model holding DPP layers, or a :class:`~dpp.Pruner` (live or finalized): a
              converted *copy* of the model is returned (DPP layers not converted become plain
              layers, as :meth:`~dpp.Pruner.finalize` makes them); the source is unchanged;
            * the path of a packed file (:func:`~dpp.export.save_packed`), with ``model`` the
              plain architecture to load it into (filled and converted in place).
        model: the plain architecture, only with a path.
        method: the :class:`KOfNLinear` method of every converted layer.
        max_density: convert only layers keeping at most this fraction of their weights;
            denser ones stay plain ``nn.Linear`` (finalized). Default: convert all. Around
            50% density the k-of-n layer saves no memory and, in docs/deploy.md, ran at
            0.7x (1 thread) to 1.5x (2 threads) the speed of dense ``F.linear``; ``0.3`` keeps
            only the layers where it clearly pays off.

    Returns:
        The model for inference (eval mode), computing what the finalized model computes up
        to float summation order.

    Example:
        >>> import torch, dpp
        >>> from dpp.export import convert_kofn
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
        ...                             torch.nn.Linear(32, 10))
        >>> pruner = dpp.prune(model, density=0.1)
        >>> fast = convert_kofn(pruner)
        >>> type(fast[0]).__name__
        'KOfNLinear'
    """
    if isinstance(source, (str, os.PathLike)):
        if model is None:
            raise TypeError("convert_kofn(path, model): give the plain architecture to load into")
        packed = read_packed(source)
        load_packed(source, model)
        layers = packed.layers
        target = model
    else:
        if model is not None:
            raise TypeError("convert_kofn: pass model only together with a packed file path")
        baked = bake(source, what="convert_kofn")
        target = baked.model
        layers = {
            name: packed_layer(name, rec, baked.module(name)) for name, rec in baked.layers.items()
        }
    for name, layer in layers.items():
        module = target.get_submodule(name)
        if not _eligible(layer.layout, module):
            continue
        if layer.layout.density > max_density:  # type: ignore[union-attr]
            continue
        bias = None if module.bias is None else module.bias.detach()
        new = KOfNLinear.from_packed(layer, bias, method=method)
        replace_module(target, module, new)
    return target.eval()
