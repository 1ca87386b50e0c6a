"""Storage accounting of a pruned (and quantized) model (method.md s.7).

:func:`storage_report` counts, per layer and in total, the bits a model takes in three layouts:

``dense_fp32``
    every weight and bias as a 32-bit float: the baseline of the compression ratios.
``csr``
    compressed sparse rows of each pruned weight viewed as a matrix ``[C_out, fan_in]``:
    ``nnz`` values of ``b`` bits, ``nnz`` 32-bit column indices and ``C_out + 1`` 32-bit row
    pointers. ``nnz`` counts the weights the mask keeps (a kept weight whose code rounds to
    0 is still stored: the layout follows the mask, as the k-of-n layout does).
``packed`` (the k-of-n layout)
    every group stores its ``k`` kept candidates, each with ``weights_per_candidate`` values of
    ``b`` bits (1 for weight/block, the kernel size for ``kernel``, the fan-in for ``filter``),
    and either ``k`` indices of ``ceil(log2 n)`` bits or an ``n``-bit bitmap, whichever is
    smaller: ``k * wpc * b + min(k * ceil(log2 n), n)`` bits per group.

Conventions shared by the layouts:

* value bits ``b``: the layer's ``weight_bits`` (2..8), 1 for binary weights (their sign: zeros
  are encoded by the indices or bitmap), 32 for float weights;
* quantization scales are fp32: one per output channel (``quant_scale="channel"``) or one per
  tensor; a layer whose input is fake-quantized also stores its activation scale (one fp32);
* biases are fp32;
* at ``filter`` granularity a pruned output unit is exactly zero, bias included, so the sparse
  layouts store the scales and biases of the ``k`` kept units only (dense fp32 stores all);
* a layer quantized but not pruned stores its ``b``-bit values densely (no indices) in both
  sparse layouts; an untouched ``nn.Linear``/``nn.ConvNd`` stays fp32 in every layout;
* every other parameter (BatchNorm affine, embeddings, ...) is fp32 in every layout; with
  ``include_buffers=True`` (default) so are the floating-point buffers needed for inference
  (BatchNorm running mean and variance); integer buffers (``num_batches_tracked``) are
  training bookkeeping and never counted;
* DPP's own training state is not counted: the logits (``dpp.logits``) and a fixed mask
  buffer (``dpp.mask``) are what the indices or bitmap encode.

Example:
    >>> import torch, dpp
    >>> from dpp.storage import storage_report
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> pruner = dpp.prune(model, k=2, weight_bits=4, overrides={"2": {"prune": False}})
    >>> report = storage_report(pruner)
    >>> layer = report.layers[0]
    >>> layer.packed.values, layer.packed.indices, layer.packed.scales, layer.packed.bias
    (32, 24, 128, 128)
    >>> report.dense_fp32_bits, report.packed_bits
    (1472, 472)
    >>> print(report.format_table())
    layer  type    kind       layout      bits  kept/weights  dense fp32    CSR  k-of-n  ratio
    -----  ------  ---------  ----------  ----  ------------  ----------  -----  ------  -----
    0      Linear  pruned     weight 2/8     4          8/32       144 B   88 B    39 B  3.69x
    2      Linear  quantized  -              4           8/8        40 B   20 B    20 B  2.00x
    -----  ------  ---------  ----------  ----  ------------  ----------  -----  ------  -----
    total                                              16/40       184 B  108 B    59 B  3.12x
    bits: dense fp32 1,472; CSR 864 (1.70x); k-of-n 472 (3.12x).
    fp32: biases, scales, other parameters, float buffers (BatchNorm running stats).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from torch import Tensor, nn

from .bake import Baked, bake
from .granularity import GroupLayout
from .layers import FinalizedLayer, canonical_weight, masked_class
from .pruner import Pruner
from .quantization import QuantSpec

__all__ = ["FormatBits", "LayerStorage", "StorageReport", "storage_report"]

FLOAT_BITS = 32
"""Bits of a float value: dense weights, biases, scales, other parameters."""

CSR_INDEX_BITS = 32
"""Bits of one CSR column index or row pointer."""


@dataclass(frozen=True)
class FormatBits:
    """Bits one layer takes in one storage layout, by component.

    Attributes:
        values: the stored weight values.
        indices: CSR column indices, or the k-of-n indices or bitmap.
        row_pointers: CSR row pointers (CSR only).
        scales: fp32 quantization scales and the activation scale.
        bias: the fp32 bias.
        other: every other parameter and counted buffer of the module, fp32.
    """

    values: int = 0
    indices: int = 0
    row_pointers: int = 0
    scales: int = 0
    bias: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def to_dict(self) -> dict[str, int]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["total"] = self.total
        return out


@dataclass(frozen=True)
class LayerStorage:
    """The storage of one module in every layout.

    Attributes:
        name: module name as ``model.named_modules()`` prints it.
        module_type: class name of the module (``"Linear"``, ``"Conv2d"``, ``"BatchNorm2d"``).
        kind: ``"pruned"`` (k-of-n mask, maybe quantized), ``"quantized"`` (quantized weights or
            input, no mask), ``"dense"`` (an untouched Linear/Conv) or ``"other"`` (any other
            module with parameters or counted buffers).
        weights: number of weights of the Linear/Conv weight (0 for ``"other"``).
        kept_weights: weights kept by the mask (``weights`` when not pruned).
        weight_bits: the configured precision: 2..8, ``"binary"`` or 32 (float).
        value_bits: bits of one stored weight value (1 for binary).
        layout: the group layout, or ``None`` when not pruned.
        index_format: how the packed layout locates the kept candidates: ``"indices"``,
            ``"bitmap"`` or ``"dense"`` (nothing pruned, no index).
        dense_fp32: bits as dense fp32.
        csr: bits in compressed sparse rows.
        packed: bits in the packed k-of-n layout.
    """

    name: str
    module_type: str
    kind: str
    weights: int
    kept_weights: int
    weight_bits: int | str
    value_bits: int
    layout: GroupLayout | None
    index_format: str
    dense_fp32: FormatBits
    csr: FormatBits
    packed: FormatBits

    @property
    def compression_ratio(self) -> float:
        """Dense fp32 bits over packed k-of-n bits."""
        return _ratio(self.dense_fp32.total, self.packed.total)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only."""
        return {
            "name": self.name,
            "module_type": self.module_type,
            "kind": self.kind,
            "weights": self.weights,
            "kept_weights": self.kept_weights,
            "weight_bits": self.weight_bits,
            "value_bits": self.value_bits,
            "layout": None if self.layout is None else self.layout.to_dict(),
            "index_format": self.index_format,
            "dense_fp32": self.dense_fp32.to_dict(),
            "csr": self.csr.to_dict(),
            "packed": self.packed.to_dict(),
            "compression_ratio": self.compression_ratio,
        }


@dataclass(frozen=True)
class StorageReport:
    """Per-module and total storage of a model; built by :func:`storage_report`.

    Attributes:
        layers: one entry per module holding parameters or counted buffers, in
            ``model.named_modules()`` order.
        buffers_counted: whether floating-point buffers (BatchNorm running stats) are counted.
    """

    layers: tuple[LayerStorage, ...]
    buffers_counted: bool = True
    _by_name: dict[str, LayerStorage] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {layer.name: layer for layer in self.layers})

    def __getitem__(self, name: str) -> LayerStorage:
        """The entry of module ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"no module {name!r} in the report; modules: {list(self._by_name)}"
            ) from None

    @property
    def dense_fp32_bits(self) -> int:
        return sum(layer.dense_fp32.total for layer in self.layers)

    @property
    def csr_bits(self) -> int:
        return sum(layer.csr.total for layer in self.layers)

    @property
    def packed_bits(self) -> int:
        return sum(layer.packed.total for layer in self.layers)

    @property
    def compression_ratio(self) -> float:
        """Dense fp32 bits over packed k-of-n bits, whole model."""
        return _ratio(self.dense_fp32_bits, self.packed_bits)

    @property
    def csr_compression_ratio(self) -> float:
        """Dense fp32 bits over CSR bits, whole model."""
        return _ratio(self.dense_fp32_bits, self.csr_bits)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only: ``{"layers": [...], "total": {...}, "buffers_counted": ...}``."""
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "total": {
                "weights": sum(layer.weights for layer in self.layers),
                "kept_weights": sum(layer.kept_weights for layer in self.layers),
                "dense_fp32_bits": self.dense_fp32_bits,
                "csr_bits": self.csr_bits,
                "packed_bits": self.packed_bits,
                "compression_ratio": self.compression_ratio,
                "csr_compression_ratio": self.csr_compression_ratio,
            },
            "buffers_counted": self.buffers_counted,
        }

    def format_table(self) -> str:
        """A table of every module's bytes in each layout, the totals and the ratios."""
        header = ["layer", "type", "kind", "layout", "bits", "kept/weights"]
        header += ["dense fp32", "CSR", "k-of-n", "ratio"]
        rows = []
        for layer in self.layers:
            lay = layer.layout
            rows.append(
                [
                    layer.name or "(model)",
                    layer.module_type,
                    layer.kind,
                    "-" if lay is None else f"{lay.granularity} {lay.k}/{lay.n}",
                    str(layer.weight_bits) if layer.weights else "-",
                    f"{layer.kept_weights:,}/{layer.weights:,}" if layer.weights else "-",
                    _format_bits(layer.dense_fp32.total),
                    _format_bits(layer.csr.total),
                    _format_bits(layer.packed.total),
                    f"{layer.compression_ratio:.2f}x",
                ]
            )
        weights = sum(layer.weights for layer in self.layers)
        kept = sum(layer.kept_weights for layer in self.layers)
        total = ["total", "", "", "", "", f"{kept:,}/{weights:,}"]
        total += [_format_bits(b) for b in (self.dense_fp32_bits, self.csr_bits, self.packed_bits)]
        total.append(f"{self.compression_ratio:.2f}x")
        widths = [max(len(row[i]) for row in [header, *rows, total]) for i in range(len(header))]
        left = {0, 1, 2, 3}

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i in left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        rule = line(["-" * w for w in widths])
        fp32 = "biases, scales, other parameters"
        if self.buffers_counted:
            fp32 += ", float buffers (BatchNorm running stats)"
        return "\n".join(
            [
                line(header),
                rule,
                *(line(r) for r in rows),
                rule,
                line(total),
                f"bits: dense fp32 {self.dense_fp32_bits:,}; CSR {self.csr_bits:,} "
                f"({self.csr_compression_ratio:.2f}x); k-of-n {self.packed_bits:,} "
                f"({self.compression_ratio:.2f}x).",
                f"fp32: {fp32}.",
            ]
        )


def storage_report(
    source: nn.Module | Pruner | Baked | Mapping[str, FinalizedLayer],
    *,
    model: nn.Module | None = None,
    include_buffers: bool = True,
) -> StorageReport:
    """Bits of a model as dense fp32, CSR and the packed k-of-n layout, per module and in total.

    Args:
        source: what to account:

            * a model holding DPP layers (live, after :func:`dpp.prune`): each layer's
              ``dpp_layout``, ``dpp_quant`` and ``dpp_act`` say how it is stored;
            * a :class:`~dpp.Pruner`, live or finalized (its ``finalized_layers`` then say how
              the plain layers of ``pruner.model`` are stored), or a :class:`~dpp.bake.Baked`;
            * a ``{name: FinalizedLayer}`` mapping (``pruner.finalized_layers``), with ``model``
              the finalized model.

            A plain model without DPP layers is accounted as dense fp32 throughout (a finalized
            model on its own no longer says what was pruned: pass its pruner).
        model: the finalized model, required with a mapping and only then.
        include_buffers: count floating-point buffers (BatchNorm running mean and variance)
            as fp32; integer buffers are never counted.

    Returns:
        A :class:`StorageReport`: ``layers`` in ``model.named_modules()`` order, totals,
        compression ratios, ``to_dict()`` and ``format_table()``.

    Raises:
        TypeError: ``source`` is none of the above, or ``model`` is missing or superfluous.
        ValueError: a finalized record names no module of ``model``, or one whose weight
            shape differs from the record's layout.

    Example:
        >>> import torch, dpp
        >>> from dpp.storage import storage_report
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
        >>> pruner = dpp.prune(model, granularity="filter", k=2, weight_bits=4,
        ...                    example_inputs=torch.randn(1, 3, 5, 5))
        >>> _ = pruner.finalize()
        >>> report = storage_report(pruner)
        >>> report["0"].packed.total  # 2*27*4 values + 2*3 indices + 2 scales + 2 biases
        350
        >>> report["1"].packed.total  # BatchNorm: weight, bias, running mean and var, fp32
        1024
    """
    if isinstance(source, Mapping):
        if model is None:
            raise TypeError(
                "a mapping of finalized layers needs model= (the finalized model) for its "
                "biases and other parameters"
            )
        if not all(isinstance(r, FinalizedLayer) for r in source.values()):
            raise TypeError(
                "the mapping must hold dpp.FinalizedLayer records (pruner.finalized_layers)"
            )
        baked = Baked(model, dict(source))
    elif model is not None:
        raise TypeError("model= is only for a mapping of finalized layers (a source has its own)")
    elif isinstance(source, (nn.Module, Pruner, Baked)):
        baked = bake(source, what="storage_report", copy=False, strict=False)
    else:
        raise TypeError(
            "storage_report expects a model, a dpp.Pruner or pruner.finalized_layers, "
            f"got {type(source).__name__}"
        )
    records = baked.layers
    _check_records(baked.model, records)

    seen: set[int] = set()  # tensors already counted (shared parameters count once)
    layers = []
    for name, module in baked.model.named_modules():
        prunable = masked_class(type(module)) is not None
        if prunable and id(module.weight) in seen:
            entry = _other_storage(name, module, seen, include_buffers)  # weight tied elsewhere
        elif name in records:
            rec = records[name]
            has_act = rec.activation_scale is not None
            entry = _layer_storage(
                name, module, rec.layout, rec.quant, has_act, seen, include_buffers
            )
        elif prunable:
            entry = _layer_storage(name, module, None, None, False, seen, include_buffers)
        else:
            entry = _other_storage(name, module, seen, include_buffers)
        if entry is not None:
            layers.append(entry)
    return StorageReport(tuple(layers), include_buffers)


# ---------------------------------------------------------------------- helpers
def _ratio(dense: int, stored: int) -> float:
    return dense / stored if stored else 1.0


def _format_bits(bits: int) -> str:
    """Bits as bytes with a binary unit: ``"45 B"``, ``"12.3 KiB"``, ``"4.56 MiB"``."""
    size = bits / 8
    if size < 1024:
        return f"{size:g} B"
    if size < 1024**2:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024**2:.2f} MiB"


def _index_bits(n: int) -> int:
    """``ceil(log2 n)``: bits of one index into ``n`` candidates (0 when ``n == 1``)."""
    return (n - 1).bit_length()


def _check_records(model: nn.Module, records: Mapping[str, FinalizedLayer]) -> None:
    for name, rec in records.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"finalized layer {name!r} is not a module of the model") from None
        if not isinstance(getattr(module, "weight", None), Tensor):
            raise ValueError(
                f"finalized layer {name!r} is a {type(module).__name__} without weight"
            )
        weight = canonical_weight(module)
        if rec.layout is not None and tuple(weight.shape) != rec.layout.weight_shape:
            raise ValueError(
                f"finalized layer {name!r}: the model's weight has shape {list(weight.shape)}, "
                f"the record's layout {list(rec.layout.weight_shape)}; is it the right model?"
            )


def _uncounted_bits(module: nn.Module, seen: set[int], include_buffers: bool) -> int:
    """fp32 bits of the module's own parameters (and float buffers) not counted yet."""
    tensors = list(module.parameters(recurse=False))
    if include_buffers:
        non_persistent = getattr(module, "_non_persistent_buffers_set", set())
        tensors += [
            b
            for n, b in module.named_buffers(recurse=False)
            if n not in non_persistent and b.is_floating_point()
        ]
    bits = 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            bits += FLOAT_BITS * t.numel()
    return bits


def _other_storage(
    name: str, module: nn.Module, seen: set[int], include_buffers: bool
) -> LayerStorage | None:
    bits = _uncounted_bits(module, seen, include_buffers)
    if not bits:
        return None
    same = FormatBits(other=bits)
    return LayerStorage(
        name=name,
        module_type=type(module).__name__,
        kind="other",
        weights=0,
        kept_weights=0,
        weight_bits=FLOAT_BITS,
        value_bits=FLOAT_BITS,
        layout=None,
        index_format="dense",
        dense_fp32=same,
        csr=same,
        packed=same,
    )


def _layer_storage(
    name: str,
    module: nn.Module,
    layout: GroupLayout | None,
    quant: QuantSpec | None,
    activation_scale: bool,
    seen: set[int],
    include_buffers: bool,
) -> LayerStorage:
    """Storage of one Linear/Conv layer: pruned (``layout``), quantized (``quant``) or neither."""
    weight = canonical_weight(module)
    bias: Tensor | None = module.bias  # type: ignore[assignment]
    seen.update(id(t) for t in (module.weight, bias) if t is not None)
    other = _uncounted_bits(module, seen, include_buffers)
    weights = weight.numel()
    outputs = weight.shape[0]
    biases = 0 if bias is None else bias.numel()
    value_bits = FLOAT_BITS if quant is None else quant.code_bits
    dense = FormatBits(values=FLOAT_BITS * weights, bias=FLOAT_BITS * biases, other=other)

    # Output units whose weights are stored: at filter level only the k kept ones.
    stored_outputs = layout.k if layout is not None and layout.prunes_bias else outputs
    num_scales = 0 if quant is None else (stored_outputs if quant.scale == "channel" else 1)
    scales = FLOAT_BITS * (num_scales + int(activation_scale))
    stored_bias = FLOAT_BITS * (stored_outputs if biases else 0)

    if layout is None:
        kept = weights
        index_format = "dense"
        stored = FormatBits(
            values=value_bits * weights, scales=scales, bias=stored_bias, other=other
        )
        csr = packed = stored
    else:
        wpc = layout.weights_per_candidate
        kept = layout.num_groups * layout.k * wpc
        index_list = layout.k * _index_bits(layout.n)
        index_format = "indices" if index_list <= layout.n else "bitmap"
        csr = FormatBits(
            values=value_bits * kept,
            indices=CSR_INDEX_BITS * kept,
            row_pointers=CSR_INDEX_BITS * (outputs + 1),
            scales=scales,
            bias=stored_bias,
            other=other,
        )
        packed = FormatBits(
            values=layout.num_groups * layout.k * wpc * value_bits,
            indices=layout.num_groups * min(index_list, layout.n),
            scales=scales,
            bias=stored_bias,
            other=other,
        )
    if layout is not None:
        kind = "pruned"
    elif quant is not None or activation_scale:
        kind = "quantized"
    else:
        kind = "dense"
    return LayerStorage(
        name=name,
        module_type=type(module).__name__,
        kind=kind,
        weights=weights,
        kept_weights=kept,
        weight_bits=FLOAT_BITS if quant is None else quant.bits,
        value_bits=value_bits,
        layout=layout,
        index_format=index_format,
        dense_fp32=dense,
        csr=csr,
        packed=packed,
    )
