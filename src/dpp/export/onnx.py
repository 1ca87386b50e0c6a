"""ONNX export of finalized and shrunk models, checked against onnxruntime."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..bake import bake
from ..layers import is_dpp_layer
from ..modeltools import as_inputs
from ..pruner import Pruner

__all__ = ["OnnxMismatchError", "onnx_outputs", "to_onnx"]


class OnnxMismatchError(RuntimeError):
    """onnxruntime's outputs differ from PyTorch's beyond the tolerance."""


def _returns_mapping(net: nn.Module) -> bool:
    """Whether ``net`` looks like a Hugging Face model (its forward returns a ModelOutput)."""
    return hasattr(net, "config") and callable(getattr(net, "get_input_embeddings", None))


def _plain(model_or_pruner: nn.Module | Pruner) -> nn.Module:
    """The model to export: the baked copy of a live source, else the plain model itself."""
    model = model_or_pruner.model if isinstance(model_or_pruner, Pruner) else model_or_pruner
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_onnx expects a torch.nn.Module or a dpp.Pruner, got {type(model)}")
    if any(is_dpp_layer(m) for m in model.modules()):
        return bake(model_or_pruner, what="to_onnx").model
    return model


class _SelectOutput(nn.Module):
    """Calls ``net(*inputs, **forward_kwargs)`` and returns plain tensors: one field of a
    ``ModelOutput``/dict result (``output``, default ``"logits"``), or the tensors of a tuple."""

    def __init__(self, net: nn.Module, forward_kwargs: dict[str, Any], output: str | None):
        super().__init__()
        self.net = net
        self.forward_kwargs = dict(forward_kwargs)
        self.output = output

    def forward(self, *inputs: Tensor) -> Any:
        result = self.net(*inputs, **self.forward_kwargs)
        if isinstance(result, Mapping) or hasattr(result, "keys"):
            keys = list(result.keys())
            key = self.output or ("logits" if "logits" in keys else None)
            if key is None or key not in keys:
                raise ValueError(
                    f"to_onnx: the model returns a {type(result).__name__} with fields {keys}; "
                    f"pick the one to export with output=... (got {self.output!r})"
                )
            return result[key]
        if self.output is not None:
            raise ValueError(
                f"to_onnx: output={self.output!r} names a field, but the model returns a "
                f"{type(result).__name__}, not a dict or ModelOutput"
            )
        if isinstance(result, (tuple, list)):
            bad = [i for i, r in enumerate(result) if not isinstance(r, Tensor)]
            if bad:
                raise ValueError(
                    f"to_onnx: outputs {bad} of the model are not tensors (a cache?); pass "
                    "forward_kwargs={'use_cache': False} or return tensors only"
                )
        return result


def onnx_outputs(path: str | os.PathLike, example_inputs: Tensor | Sequence[Tensor]) -> list:
    """Run an ONNX file with onnxruntime (CPU) and return its outputs as numpy arrays."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError(
            "checking an ONNX export needs onnxruntime: pip install dpp[onnx]"
        ) from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        arg.name: t.detach().cpu().numpy()
        for arg, t in zip(session.get_inputs(), as_inputs(example_inputs), strict=False)
    }
    return session.run(None, feeds)


def to_onnx(
    model: nn.Module | Pruner,
    example_inputs: Tensor | Sequence[Tensor],
    path: str | os.PathLike,
    *,
    dynamo: bool | None = None,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
    check: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    forward_kwargs: dict[str, Any] | None = None,
    output: str | None = None,
) -> Path:
    """Export a finalized or shrunk model to ONNX and check it with onnxruntime.

    Args:
        model: a plain model (after :meth:`~dpp.Pruner.finalize`, :func:`~dpp.export.shrink`
            or :func:`~dpp.export.load_packed`), a :class:`~dpp.Pruner`, or a model still
            holding DPP layers (exported as its finalized copy; the model is not modified).
        example_inputs: a tensor or a tuple of tensors the model is called with.
        path: the ``.onnx`` file to write. The weights are stored inside it.
        dynamo: ``True`` for the ``torch.export``-based exporter (needs ``onnxscript``),
            ``False`` for the TorchScript-based one (deprecated in torch >= 2.9, still
            shipped); default: the former when ``onnxscript`` is installed.
        dynamic_batch: make the first dimension of every input and output dynamic.
        opset_version: ONNX opset (default: the exporter's).
        check: run the file with onnxruntime on ``example_inputs`` and compare with the
            model's outputs; skipped when onnxruntime is not installed.
        rtol: relative tolerance of the check.
        atol: absolute tolerance of the check.
        forward_kwargs: constant keyword arguments of every call, e.g. ``{"use_cache":
            False}`` for a Hugging Face causal LM (a cache in the output cannot be exported).
        output: the field to export when the model returns a dict or a ``ModelOutput``
            (default ``"logits"`` where there is one).

    Returns:
        The path written.

    Raises:
        OnnxMismatchError: the check failed.
        ImportError: ``dynamo=True`` without ``onnxscript``.

    Example:
        >>> import tempfile, torch, dpp
        >>> from dpp.export import to_onnx
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(),
        ...                             torch.nn.Linear(8, 2))
        >>> pruner = dpp.prune(model, density=0.25)
        >>> _ = model.eval(); _ = pruner.finalize()
        >>> path = to_onnx(model, torch.randn(3, 16), tempfile.mkdtemp() + "/m.onnx",
        ...                dynamo=False)
        >>> path.suffix
        '.onnx'
    """
    net = _plain(model)
    if forward_kwargs or output is not None or _returns_mapping(net):
        net = _SelectOutput(net, forward_kwargs or {}, output)
    inputs = as_inputs(example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if dynamo is None:
        dynamo = importlib.util.find_spec("onnxscript") is not None
    was_training = net.training
    net.eval()
    input_names = [f"input_{i}" for i in range(len(inputs))]
    try:
        with torch.no_grad():
            reference = net(*inputs)
        outputs = reference if isinstance(reference, (tuple, list)) else (reference,)
        output_names = [f"output_{i}" for i in range(len(outputs))]
        names = {"input_names": input_names, "output_names": output_names}
        if dynamo:
            if importlib.util.find_spec("onnxscript") is None:
                raise ImportError(
                    "the torch.export-based ONNX exporter needs onnxscript: pip install "
                    "onnxscript (or pass dynamo=False for the TorchScript-based exporter)"
                )
            dynamic_shapes = None
            if dynamic_batch:
                batch = torch.export.Dim.DYNAMIC
                dynamic_shapes = tuple({0: batch} for _ in inputs)
                if isinstance(net, _SelectOutput):  # forward(*inputs): one varargs entry
                    dynamic_shapes = (dynamic_shapes,)
            sink = io.StringIO()
            with contextlib.redirect_stdout(sink), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    net,
                    inputs,
                    dynamo=True,
                    opset_version=opset_version,
                    dynamic_shapes=dynamic_shapes,
                    optimize=True,
                    **names,
                )
            assert program is not None
            program.save(str(path), external_data=False)
        else:
            axes = None
            if dynamic_batch:
                axes = {name: {0: "batch"} for name in input_names + output_names}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    net,
                    inputs,
                    str(path),
                    dynamo=False,
                    opset_version=opset_version,
                    dynamic_axes=axes,
                    **names,
                )
    finally:
        net.train(was_training)
    if check and importlib.util.find_spec("onnxruntime") is not None:
        got = onnx_outputs(path, inputs)
        for i, (ref, out) in enumerate(zip(outputs, got, strict=True)):
            ref_t = ref.detach().cpu()
            out_t = torch.from_numpy(out)
            if out_t.shape != ref_t.shape or not torch.allclose(out_t, ref_t, rtol=rtol, atol=atol):
                err = (out_t - ref_t).abs().max().item() if out_t.shape == ref_t.shape else None
                raise OnnxMismatchError(
                    f"{path}: onnxruntime output {i} differs from PyTorch's (max |diff| {err}, "
                    f"shapes {list(out_t.shape)} vs {list(ref_t.shape)}; rtol={rtol}, "
                    f"atol={atol}). Try the other exporter (dynamo={not dynamo})."
                )
    return path
