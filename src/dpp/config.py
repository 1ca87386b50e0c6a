"""The serialisable configuration of :func:`dpp.prune` and its resolution per layer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from fnmatch import fnmatchcase
from typing import Any

from .granularity import GRANULARITIES, check_k
from .quantization import QUANT_SCALES, QuantSpec
from .schedules import Schedule

__all__ = ["OVERRIDE_KEYS", "DPPConfig", "LayerSettings", "matches_pattern"]

LOGIT_INITS = ("normal", "magnitude", "wanda", "sparsegpt", "sparsegpt-saliency")
LOGIT_DTYPES = ("float32", "bfloat16", "float16")
OVERRIDE_KEYS = (
    "granularity",
    "density",
    "k",
    "block_size",
    "prune",
    "weight_bits",
    "quant_scale",
    "activation_bits",
)


def _check_layer_values(where: str, values: dict[str, Any]) -> None:
    """Validate the per-layer keys shared by the config and its overrides."""
    gran = values.get("granularity")
    if gran is not None and gran not in GRANULARITIES:
        raise ValueError(
            f"{where}: unknown granularity {gran!r}; "
            f"valid: {', '.join(repr(g) for g in GRANULARITIES)}"
        )
    density = values.get("density")
    if density is not None and (
        isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1
    ):
        raise ValueError(f"{where}: density must be in (0, 1], got {density!r}")
    for key in ("k", "block_size"):
        value = values.get(key)
        if value is not None:
            check_k(value, where=where, name=key)
    scale = values.get("quant_scale", "channel")
    if scale not in QUANT_SCALES:
        raise ValueError(f"{where}: quant_scale must be one of {QUANT_SCALES}, got {scale!r}")
    bits = values.get("weight_bits")
    if bits not in (None, 32):
        try:
            QuantSpec(bits, scale)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    if values.get("activation_bits") not in (None, 8):
        raise ValueError(
            f"{where}: activation_bits must be None or 8, got {values.get('activation_bits')!r}"
        )


@dataclass(frozen=True)
class LayerSettings:
    """The settings one layer ends up with after the overrides are applied."""

    granularity: str
    density: float | None
    k: int | None
    block_size: int | None
    prune: bool
    weight_bits: int | str | None
    quant_scale: str
    activation_bits: int | None

    @property
    def quant(self) -> QuantSpec | None:
        if self.weight_bits is None or self.weight_bits == 32:
            return None
        return QuantSpec(self.weight_bits, self.quant_scale)

    @property
    def touched(self) -> bool:
        """Whether DPP replaces the layer at all (pruned or quantized)."""
        return self.prune or self.quant is not None or self.activation_bits is not None


def matches_pattern(name: str, pattern: str) -> bool:
    """A glob matches a layer's own name or the name of a module that contains it."""
    parts = name.split(".")
    return any(fnmatchcase(".".join(parts[:i]), pattern) for i in range(len(parts), 0, -1))


@dataclass
class DPPConfig:
    """Everything :func:`dpp.prune` needs; serialises to a plain dict / JSON.

    Args:
        granularity: ``"weight"`` (k of every output unit's fan-in), ``"block"`` (k of every
            ``block_size`` consecutive inputs, N:M), ``"kernel"`` (k of C_in kernels per
            feature map, convolutions only) or ``"filter"`` (k of C_out feature maps).
        density: fraction kept per group; ``k = max(1, round(density * n))``.
        k: candidates kept per group (instead of ``density``).
        block_size: ``m`` of the ``"block"`` granularity (4 for 2:4).
        include: glob patterns of module names (as ``model.named_modules()`` prints them) to
            prune; a pattern also selects every layer inside a matching module. ``None``:
            every ``nn.Linear`` and ``nn.Conv1d/2d/3d``.
        exclude: glob patterns of module names left untouched.
        overrides: ``{pattern: {key: value}}`` applied in order to matching layers; keys:
            granularity, density, k, block_size, prune (``False`` keeps the layer dense),
            weight_bits, quant_scale, activation_bits.
        temperature: the relaxation temperature ``tau``: a number (constant) or a
            :class:`~dpp.Schedule` (or its dict), advanced by ``Pruner.step()``.
        noise_scale: the Gumbel noise multiplier ``beta``: a number or a schedule. 1.0 samples
            masks exactly from the logits' Plackett-Luce distribution; the default 0.3 (a
            sharper distribution, fewer mask flips per step) trained clearly more accurate
            masks in the tuning grid of docs/results.md.
        sparsity_ramp: ``None`` (the target k from the first step), or a schedule of the
            fraction of the target sparsity reached, from 0 (dense) to 1, e.g.
            ``Schedule("cubic", 0.0, 1.0, steps=S)``: every learned layer keeps
            ``ceil(n - r (n - k))`` candidates per group at ramp value ``r`` (gradual
            pruning with learned masks). ``finalize()`` always uses the target k.
        logit_init_std: standard deviation of the logits' initialisation.
        logit_init: ``"normal"`` (``N(0, logit_init_std^2)``), or a one-shot prior for a
            start from a trained dense model, whose scores are z-scored per group and
            multiplied by ``logit_init_std`` (the *prior strength*; 3.0 is a good value for a
            pretrained model), so that the first deterministic masks are the prior's:
            ``"magnitude"`` (``|W|``), ``"wanda"`` (``|W_ij| * ||X_j||_2`` over calibration
            inputs), ``"sparsegpt"`` (the mask SparseGPT's OBS selection picks, as a 0/1
            score, weights left unchanged; weight and block granularity) or
            ``"sparsegpt-saliency"`` (the same selection, graded: the log of SparseGPT's OBS
            saliency ``W^2 / [H^-1]_jj`` at the moment each group is decided, so that the
            start also says how sure the selection was; its top-k is SparseGPT's mask).
            ``"wanda"`` and both ``"sparsegpt"`` priors need
            ``dpp.prune(..., calibration_data=...)`` and take every layer's inputs from one
            pass of the dense model (:func:`dpp.oneshot` prunes sequentially instead); see
            :mod:`dpp.priors`.
        entropy_weight: ``lambda`` of ``Pruner.entropy_loss()``.
        weight_bits: ``None`` (float), 2..8 or ``"binary"``: joint weight quantization.
        quant_scale: ``"channel"`` or ``"tensor"`` quantization scale.
        activation_bits: ``None`` or 8: fake-quantize every touched layer's input.
        resample_every: ``M >= 1``: every learned mask is drawn once per ``M`` pruner steps
            and held meanwhile (1, the default: a fresh draw at every forward call). While a
            draw is held the logits still train at every step: their gradient is the
            relaxed gradient of the held draw (its noise, its kept set) at the current
            logits. Needs ``Pruner.step()`` once per optimizer step.
        logit_dtype: storage dtype of the logits (and so of their gradient): ``"float32"``
            (the default), ``"bfloat16"`` or ``"float16"`` (2 bytes per candidate instead
            of 4, for large models; the sampler computes in float32 either way, and
            :meth:`Pruner.optimizer` updates 16-bit logits with stochastic rounding).
        keep_scores: keep every N:M draw's float32 scores for the backward pass (4 bytes
            per pruned weight while a step runs) instead of drawing its Gumbel noise again
            there from the generator's saved state (the default). The masks and gradients
            are the same, bit for bit; keeping is faster where noise is slow to draw (CPUs,
            docs/benchmarks.md), redrawing saves the memory (large models, GPUs); a saved
            pruner state loads with either setting. Other granularities keep their scores
            either way.

    Example:
        >>> import dpp
        >>> cfg = dpp.DPPConfig(density=0.05, overrides={"fc3": {"density": 0.5}})
        >>> dpp.DPPConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    granularity: str = "weight"
    density: float | None = None
    k: int | None = None
    block_size: int | None = None
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    temperature: Schedule = field(default_factory=lambda: Schedule("constant", 1.0))
    noise_scale: Schedule = field(default_factory=lambda: Schedule("constant", 0.3))
    sparsity_ramp: Schedule | None = None
    logit_init_std: float = 0.5
    logit_init: str = "normal"
    entropy_weight: float = 0.0
    weight_bits: int | str | None = None
    quant_scale: str = "channel"
    activation_bits: int | None = None
    resample_every: int = 1
    logit_dtype: str = "float32"
    keep_scores: bool = False

    def __post_init__(self) -> None:
        self.temperature = Schedule.coerce(self.temperature, "temperature")
        self.noise_scale = Schedule.coerce(self.noise_scale, "noise_scale")
        if self.sparsity_ramp is not None:
            self.sparsity_ramp = Schedule.coerce(self.sparsity_ramp, "sparsity_ramp")
        if isinstance(self.include, str):
            self.include = [self.include]
        if isinstance(self.exclude, str):
            self.exclude = [self.exclude]
        self.exclude = list(self.exclude)
        if self.include is not None:
            self.include = list(self.include)
        self.overrides = {str(p): dict(v) for p, v in dict(self.overrides).items()}
        self._validate()

    def _validate(self) -> None:
        if self.density is not None and self.k is not None:
            raise ValueError(
                f"give density or k, not both (got density={self.density}, k={self.k})"
            )
        _check_layer_values(
            "config",
            {
                "granularity": self.granularity,
                "density": self.density,
                "k": self.k,
                "block_size": self.block_size,
                "weight_bits": self.weight_bits,
                "quant_scale": self.quant_scale,
                "activation_bits": self.activation_bits,
            },
        )
        for name, sched, ok, bound in (
            ("temperature", self.temperature, lambda v: v > 0, "> 0"),
            ("noise_scale", self.noise_scale, lambda v: v >= 0, ">= 0"),
        ):
            for value in (sched.start, sched.end if sched.end is not None else sched.start):
                if not ok(value):
                    raise ValueError(f"{name} must stay {bound}; the schedule reaches {value}")
        ramp = self.sparsity_ramp
        if ramp is not None:
            for value in (ramp.start, ramp.end if ramp.end is not None else ramp.start):
                if not 0 <= value <= 1:
                    raise ValueError(
                        f"sparsity_ramp values are fractions of the target sparsity, in [0, 1]; "
                        f"the schedule reaches {value}"
                    )
        if self.logit_init not in LOGIT_INITS:
            raise ValueError(
                f"logit_init must be one of {', '.join(LOGIT_INITS)}, got {self.logit_init!r}"
            )
        if self.logit_init_std < 0:
            raise ValueError(f"logit_init_std must be >= 0, got {self.logit_init_std}")
        if self.entropy_weight < 0:
            raise ValueError(f"entropy_weight must be >= 0, got {self.entropy_weight}")
        every = self.resample_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(
                f"resample_every must be an int >= 1 (1: a fresh mask every step), got {every!r}"
            )
        if not isinstance(self.keep_scores, bool):
            raise TypeError(f"keep_scores must be true or false, got {self.keep_scores!r}")
        if self.logit_dtype not in LOGIT_DTYPES:
            raise ValueError(
                f"logit_dtype must be one of {', '.join(LOGIT_DTYPES)}, got {self.logit_dtype!r}"
            )
        for pattern, values in self.overrides.items():
            unknown = set(values) - set(OVERRIDE_KEYS)
            if unknown:
                raise ValueError(
                    f"override {pattern!r} has unknown key(s) {sorted(unknown)}; "
                    f"valid keys: {', '.join(OVERRIDE_KEYS)}"
                )
            if values.get("density") is not None and values.get("k") is not None:
                raise ValueError(f"override {pattern!r}: give density or k, not both")
            if "prune" in values and not isinstance(values["prune"], bool):
                raise TypeError(f"override {pattern!r}: prune must be true or false")
            merged = {"quant_scale": self.quant_scale, **values}
            _check_layer_values(f"override {pattern!r}", merged)

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON types only) that :meth:`from_dict` turns back into this config."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Schedule):
                value = value.to_dict()
            elif isinstance(value, list):
                value = list(value)
            elif isinstance(value, dict):
                value = {p: dict(v) for p, v in value.items()}
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DPPConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are an error."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown DPP config key(s) {unknown}; valid keys: {', '.join(valid)}")
        return cls(**data)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> DPPConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> DPPConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # ---------------------------------------------------------------- resolution
    def selects(self, name: str) -> bool:
        """Whether a prunable layer of this name is selected by include/exclude."""
        if self.include is not None and not any(matches_pattern(name, p) for p in self.include):
            return False
        return not any(matches_pattern(name, p) for p in self.exclude)

    def settings_for(self, name: str) -> LayerSettings:
        """The settings of a selected layer after applying every matching override in order."""
        values: dict[str, Any] = {
            "granularity": self.granularity,
            "density": self.density,
            "k": self.k,
            "block_size": self.block_size,
            "prune": self.density is not None or self.k is not None,
            "weight_bits": self.weight_bits,
            "quant_scale": self.quant_scale,
            "activation_bits": self.activation_bits,
        }
        for pattern, override in self.overrides.items():
            if not matches_pattern(name, pattern):
                continue
            sets_k = "density" in override or "k" in override
            if sets_k:
                values["density"] = values["k"] = None
            if "granularity" in override and override["granularity"] != "block":
                values["block_size"] = None
            values.update(override)
            if sets_k and "prune" not in override:
                values["prune"] = True
        return LayerSettings(**values)

    def unmatched_patterns(self, names: list[str]) -> dict[str, list[str]]:
        """Patterns of include/exclude/overrides that match none of ``names``."""
        out: dict[str, list[str]] = {}
        for kind, patterns in (
            ("include", self.include or []),
            ("exclude", self.exclude),
            ("overrides", list(self.overrides)),
        ):
            missing = [p for p in patterns if not any(matches_pattern(n, p) for n in names)]
            if missing:
                out[kind] = missing
        return out
