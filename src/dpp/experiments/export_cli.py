"""``dpp export RUN --format torch|packed|onnx|shrunk``: deployable files from a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from dpp.bake import bake

from .checkpoint import atomic_write
from .errors import ExportError

__all__ = ["export_run", "register_cli"]

FORMATS = {
    "torch": "model.pt",
    "packed": "model.packed.safetensors",
    "onnx": "model.onnx",
    "shrunk": "model.shrunk.pt",
}


def export_run(run: str | Path, fmt: str, out: str | Path | None = None) -> tuple[Path, str]:
    """Export a run's model; returns the written path and a line describing it.

    Formats:
        ``torch``: the finalized state dict (zeros where pruned; loads into the dense
        architecture with ``strict=True``); ``packed``: the k-of-n safetensors file of
        :func:`dpp.export.save_packed`; ``onnx``: the finalized model, checked with
        onnxruntime; ``shrunk``: filter-pruned channels removed (a pickled module, since its
        shapes differ from the registry's architecture).
    """
    from dpp import export

    from .data import dataset_info
    from .trainer import load_run

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if out is not None and Path(out).is_dir():
        raise ExportError(f"--out {out} is a directory; give the file to write")
    loaded = load_run(run, load_data=False)
    pruner = loaded.pruner
    if pruner is None and fmt in ("packed", "shrunk"):
        raise ExportError(
            f"{run}: a {loaded.cfg.method} run has no k-of-n masks to export as {fmt}; "
            "use --format torch or onnx"
        )
    path = Path(out) if out is not None else loaded.path.parent / "export" / FORMATS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    info = dataset_info(loaded.cfg.data.dataset)
    example = torch.zeros(1, *info.input_shape)

    if fmt == "packed":
        packed = export.save_packed(pruner, path)
        return path, str(packed)
    if fmt == "shrunk":
        small, report = export.shrink(pruner, example, report=True)
        atomic_write(path, lambda tmp: torch.save(small, tmp))
        return path, str(report)
    final = _finalized(loaded.model, pruner)
    if fmt == "torch":
        state = final.state_dict()
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        size = path.stat().st_size
        return path, f"finalized state dict, {size / 1024:.1f} KiB (dense layout, zeros kept)"
    export.to_onnx(final, example, path)
    return path, f"ONNX, {path.stat().st_size / 1024:.1f} KiB, outputs checked with onnxruntime"


def _finalized(model: torch.nn.Module, pruner: Any) -> torch.nn.Module:
    """A finalized copy (the loaded run stays as it is)."""
    if pruner is None:
        return model
    return bake(pruner, what="dpp export").model.eval()


def _cmd_export(args: argparse.Namespace) -> int:
    path, description = export_run(args.run, args.format, args.out)
    print(f"wrote {path}")
    print(description)
    return 0


def register_cli(sub: Any) -> None:
    p = sub.add_parser("export", help="deployable files from a run: torch, packed, onnx, shrunk")
    p.add_argument("run", metavar="RUN_OR_CKPT")
    p.add_argument("--format", "-f", choices=sorted(FORMATS), default="packed")
    p.add_argument("--out", "-o", help=f"output file (default: RUN/export/{FORMATS['packed']}...)")
    p.set_defaults(func=_cmd_export)
