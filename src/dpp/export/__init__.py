"""Deployable export of pruned models: files, kernels and smaller models that use the sparsity.

=============================  ===========================================================
function                       what it gives
=============================  ===========================================================
:func:`save_packed`            a safetensors file with only the kept weights (``[G, k]``
                               values or int8 codes) and their narrowest-dtype indices
:func:`load_packed`            the file restored into the plain architecture, identical
                               outputs to the finalized model
:func:`convert_kofn`           weight/block-pruned Linear layers as :class:`KOfNLinear`,
                               computed from values and indices on CPU
:func:`shrink`                 filter-pruned channels physically removed (Torch-Pruning;
                               ``pip install dpp[shrink]``), identical outputs
:func:`to_onnx`                an ONNX file of a finalized or shrunk model, checked with
                               onnxruntime
:func:`to_semi_structured`     2:4-pruned Linear layers as ``torch.sparse`` semi-structured
                               tensors on an NVIDIA GPU (compute capability >= 8.0)
=============================  ===========================================================

All of them take the model while it still holds DPP layers, or its :class:`~dpp.Pruner`
(before or after :meth:`~dpp.Pruner.finalize`): a finalized model alone no longer says which
weights were pruned, and zeros are never taken for pruned weights (a kept weight may be 0).
None of them modifies its source. Measured speedups: ``docs/deploy.md``.

Example:
    >>> import tempfile, torch, dpp
    >>> from dpp import export
    >>> model = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.ReLU(),
    ...                             torch.nn.Linear(128, 10))
    >>> pruner = dpp.prune(model, density=0.05, overrides={"2": {"prune": False}})
    >>> _ = model.eval(); _ = pruner.finalize()
    >>> path = tempfile.mkdtemp() + "/model.safetensors"
    >>> info = export.save_packed(pruner, path)          # file size vs theoretical bits
    >>> fast = export.convert_kofn(path, torch.nn.Sequential(
    ...     torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)))
    >>> x = torch.randn(1, 256)
    >>> torch.allclose(fast(x), model(x), atol=1e-5)
    True
"""

from .kofn import KOfNLinear, convert_kofn
from .onnx import OnnxMismatchError, to_onnx
from .packed import (
    FORMAT_VERSION,
    PackedFileError,
    PackedInfo,
    PackedLayer,
    PackedModel,
    load_packed,
    read_packed,
    save_packed,
)
from .semi_structured import SemiStructuredError, to_semi_structured
from .shrink import ShrinkReport, count_flops, shrink

__all__ = [
    "FORMAT_VERSION",
    "KOfNLinear",
    "OnnxMismatchError",
    "PackedFileError",
    "PackedInfo",
    "PackedLayer",
    "PackedModel",
    "SemiStructuredError",
    "ShrinkReport",
    "convert_kofn",
    "count_flops",
    "load_packed",
    "read_packed",
    "save_packed",
    "shrink",
    "to_onnx",
    "to_semi_structured",
]
