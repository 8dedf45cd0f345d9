"""Time each step of a Llama-2-7B edit would take on a GPU, estimated from FLOP counts.

Nothing here runs on a GPU. For every step (the key statistics of one layer or of MEMIT's five, a
ROME edit, a MEMIT edit of 1 and of 100 requests, the evaluation of one CounterFact case) the
work that robustedit actually runs is written out as passes (``Work``): FLOPs of the decoder
layers' matmuls and attention in the model's dtype, of the LM head, of float32 and float64
products and solves; the weights each pass streams from device memory; the decoder layers the
host has to dispatch; the bytes copied between host and device. A device turns a pass into
seconds as a roofline with a host floor:

    max(FLOPs / (peak × utilisation), bytes / (bandwidth × efficiency), layers × host time per layer)
    + host↔device bytes / PCIe rate

with the assumptions (``DEVICES``, ``SCENARIOS``) written out below with their sources; every
estimate is printed as central (fast-slow). Shapes (token counts) are typical CounterFact cases
measured with SmolLM2's tokenizer (``Shapes``).

``--measure`` checks the FLOP model on this CPU with SmolLM2 in float32: it measures the CPU's
matmul throughput at the very shapes the passes use, then runs one real ROME edit (the first of a
fresh editor: context templates generated, C read from the statistics cache), the evaluation of
CounterFact case 0 and the key statistics of 16,384 tokens, and prints measured / predicted per
phase, the prediction being FLOPs / measured throughput, and again with the CPU's measured
per-layer dispatch overhead added. It waits until the 1-minute load average is below
``--max-load`` (the machine is shared) and reports the load at each measurement.

    python benchmarks/gpu_time.py                        # the tables (instant)
    OMP_NUM_THREADS=1 python benchmarks/gpu_time.py --measure   # + SmolLM2 on this CPU (~40 s when quiet)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu_memory import LLAMA2_7B, Dims, memit_top_layer, rome_layer, smollm2

T = 1e12  # FLOPs per TFLOP
F64 = 8

# --- the work ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shapes:
    """Token counts of the work. Defaults: CounterFact with SmolLM2's tokenizer (medians over
    cases 0-19 for ROME and evaluation, over cases 0-99 for MEMIT's batch; Llama-2's tokenizer
    also prepends BOS and splits words a little differently: expect ±20%). ``--measure`` uses the
    exact shapes of the edit it runs."""

    gen_prompt: int = 2  # tokens of a context-template seed word ("The", "Because", ...) + BOS
    rome_rows: int = 22  # value batch: 1 + 10 + 10 context templates + 1 KL prompt
    rome_prefix: int = 16  # template + prompt up to the subject's last token (PrefixCachedBatch)
    rome_suffix: int = 4  # subject's last token to the end of the teacher-forced target
    rome_targets: int = 21  # target tokens scored per step (one per template for a 1-token target)
    rome_key_len: int = 21  # padded length of the 21 key prompts (one batch)
    value_steps: int = 25  # v_num_grad_steps, the cap; taken on SmolLM2 (median): ROME 22, MEMIT 25
    memit_rows: int = 7  # per request: 1 + 5 context templates + 1 KL prompt
    memit_prefix: int = 21  # longest prefix of a batch of 16 requests
    memit_suffix: int = 5  # (optimize_values groups requests of equal suffix length)
    memit_targets: int = 8  # target tokens per request (6 templates)
    memit_key_len: int = 24  # padded length of a batch of 64 key prompts (10-token templates)
    memit_bare_len: int = 17  # padded length of a batch of 64 bare prompts (h_L)
    eval_nodes: int = 266  # a case's ~33 scored sequences as one prefix-tree row (models/packing.py)
    eval_scored: int = 33  # distinct positions whose log-softmax is read


@dataclass(frozen=True)
class Work:
    """One kind of pass, run ``count`` times; every other field is per run."""

    what: str
    count: float = 1
    tokens: float = 0  # rows through the decoder layers' matmuls (an average over uneven batches)
    layer_flops: float = 0  # decoder layers: matmuls + attention, in the model's dtype
    head_rows: int = 0  # positions the LM head is applied to
    head_flops: float = 0
    f32_flops: float = 0  # float32 matmuls (Σ k kᵀ of the statistics)
    f64_flops: float = 0  # float64 linear algebra (the solves)
    mem_bytes: float = 0  # device memory streamed: weights read, large elementwise ops
    layer_calls: int = 0  # decoder layers the host dispatches (forward and backward)
    host_bytes: float = 0  # copied between host and device memory

    @property
    def model_flops(self) -> float:
        return self.layer_flops + self.head_flops


def mlp_in_weights(dims: Dims) -> int:
    """Weights of one decoder layer up to the down-projection's input: q, k, v, o, gate, up."""
    return 2 * dims.d * dims.d + 2 * dims.d * dims.d_kv + 2 * dims.d * dims.d_mlp


def layer_weights(dims: Dims) -> int:
    return mlp_in_weights(dims) + dims.d * dims.d_mlp  # + down


def layers_pass(dims: Dims, b: int, what: str, *, rows: int, length: int, ctx: int, layers: int,
                partial: bool = False, head_rows: int = 0, backward: bool = False, count: float = 1) -> Work:
    """``layers`` decoder layers run on ``rows`` × ``length`` tokens that attend to ``ctx``
    positions each (counted in full: causal kernels skip about half; attention is 1-2% of a
    Llama-2-7B layer at these lengths, 8% of SmolLM2's), the last layer only up to the
    down-projection's input if ``partial`` (the statistics and keys stop there), and the LM head at
    ``head_rows`` positions. Matmuls cost 2 FLOPs per weight per token, attention 4·ctx·d per token
    (QKᵀ and AV).

    ``backward``: the backward pass of the same layers. The weights are frozen
    (``models/load.py``: ``requires_grad_(False)``), so only the activations' gradients are
    computed: one matmul per forward matmul (not two), attention's backward about twice its
    forward; the weights are streamed once more."""
    tokens = rows * length
    per_token = 2 * (layers - partial) * layer_weights(dims) + 2 * partial * mlp_in_weights(dims)
    attention = 4 * ctx * dims.d * layers * (2 if backward else 1)
    weights = (layers - partial) * layer_weights(dims) + partial * mlp_in_weights(dims) + bool(head_rows) * dims.vocab * dims.d
    return Work(what, count, tokens, tokens * (per_token + attention), head_rows, 2 * head_rows * dims.d * dims.vocab,
                mem_bytes=weights * b, layer_calls=layers)


def generate(dims: Dims, b: int, what: str, rows: int, prompt: int, new: int) -> list[Work]:
    """``model.generate`` of ``new`` tokens for ``rows`` prompts of ``prompt`` tokens, with a KV
    cache: one pass over the prompts, then one pass per further token; each applies the LM head
    at the last position only."""
    N = dims.n_layers
    return [layers_pass(dims, b, f"{what}: prompt pass", rows=rows, length=prompt, ctx=prompt, layers=N, head_rows=rows),
            layers_pass(dims, b, f"{what}: one token", rows=rows, length=1, ctx=prompt + new, layers=N, head_rows=rows,
                        count=new - 1)]


def solve(dims: Dims, what: str, rhs: int) -> Work:
    """``torch.linalg.solve`` of the d_mlp × d_mlp float64 system: LU (2/3 n³), the two triangular
    solves (2 n² per right-hand side), after C (kept in host memory) is copied to the device."""
    n = dims.d_mlp
    return Work(what, f64_flops=2 / 3 * n**3 + 2 * n * n * rhs, mem_bytes=3 * n * n * F64, host_bytes=n * n * F64)


def stats_works(dims: Dims, b: int, layers: list[int], n_tokens: int = 200_000, seq_len: int = 256,
                batch: int = 8) -> list[Work]:
    """``compute_second_moments`` (stats/covariance.py): windows of ``seq_len`` tokens, ``batch`` per
    forward pass, which stops at the deepest layer's down-projection input; per layer and batch
    the float32 product kᵀk (2·tokens·d_mlp² FLOPs) is added into the float64 sum (read 4 + 8,
    write 8 bytes per entry); at the end the sum is divided and copied to the host."""
    windows = n_tokens // seq_len
    batches = math.ceil(windows / batch)
    rows = windows / batches  # the last batch is smaller: average rows per pass
    n2 = dims.d_mlp**2
    forward = layers_pass(dims, b, f"forward to layer {max(layers)}, {batch} × {seq_len} tokens", rows=rows,
                          length=seq_len, ctx=seq_len, layers=max(layers) + 1, partial=True, count=batches)
    per_batch = replace(forward, f32_flops=len(layers) * 2 * rows * seq_len * n2,
                        mem_bytes=forward.mem_bytes + len(layers) * 24 * n2)
    return [per_batch, Work("C / count, to the host", mem_bytes=len(layers) * 16 * n2, host_bytes=len(layers) * 8 * n2)]


def value_works(dims: Dims, b: int, layer: int, *, rows: int, prefix: int, suffix: int, targets: int,
                kl: int, steps: int, count: float = 1) -> list[Work]:
    """``_optimize_batch`` (editors/values.py) for one batch of requests: the prefixes run once into
    a KV cache (``PrefixCachedBatch.build``), the suffixes once through every layer to record
    layer ``layer``'s inputs (``hidden(from_layer=...)``), then each Adam step runs layers
    ``layer``… on the suffix tokens (attending to prefix + suffix), the LM head at the target
    tokens and the KL prompts, and the backward pass down to δ at ``layer``'s output (the layers
    above it). The last step stops before its backward pass. Each step also copies the prefix
    cache (``copy.deepcopy``)."""
    N, above = dims.n_layers, dims.n_layers - layer
    cache = 2 * N * rows * prefix * dims.d_kv * b
    step = layers_pass(dims, b, "step, forward", rows=rows, length=suffix, ctx=prefix + suffix, layers=above,
                       head_rows=targets + kl, count=count * steps)
    return [
        layers_pass(dims, b, "prefix KV cache", rows=rows, length=prefix, ctx=prefix, layers=N, count=count),
        layers_pass(dims, b, "recording pass", rows=rows, length=suffix, ctx=prefix + suffix, layers=N, count=count),
        replace(step, mem_bytes=step.mem_bytes + 2 * cache),
        layers_pass(dims, b, "step, backward", rows=rows, length=suffix, ctx=prefix + suffix, layers=above - 1,
                    head_rows=targets + kl, backward=True, count=count * (steps - 1)),
    ]


def rome_phases(dims: Dims, b: int, s: Shapes, layer: int) -> dict[str, list[Work]]:
    """A ROME edit (editors/rome.py) by the phases of its ``info["timing"]``; "context" runs once
    per editor (the templates are kept), the rest for every edit."""
    n, d = dims.d_mlp, dims.d
    return {
        "context": generate(dims, b, "templates (5 tokens)", 10, s.gen_prompt, 5)
        + generate(dims, b, "templates (10 tokens)", 10, s.gen_prompt, 10),
        "key": [layers_pass(dims, b, "key prompts", rows=s.rome_rows - 1, length=s.rome_key_len, ctx=s.rome_key_len,
                            layers=layer + 1, partial=True)],
        "value": value_works(dims, b, layer, rows=s.rome_rows, prefix=s.rome_prefix, suffix=s.rome_suffix,
                             targets=s.rome_targets, kl=1, steps=s.value_steps),
        "update": [solve(dims, "C⁻¹k* (float64)", 1),
                   Work("W k*, ΔW = Λuᵀ", f32_flops=2 * d * n, mem_bytes=(4 + 2 * b) * d * n)],
    }


def memit_phases(dims: Dims, b: int, s: Shapes, n_req: int, batch: int = 16) -> dict[str, list[Work]]:
    """A MEMIT edit of ``n_req`` requests (editors/memit.py): the values of ``batch`` requests
    (``v_batch_size``) optimised together at the top layer; then per edited layer the keys of every
    request in its 6 templates (batches of 64 prompts, the pass stopping at the layer), h_L on the
    bare prompts, and the update R Kᵀ(λC + KKᵀ)⁻¹ in float64."""
    top = memit_top_layer(dims)
    layers = list(range(top - 4, top + 1))
    n, d = dims.d_mlp, dims.d
    full, rest = divmod(n_req, batch)
    values = value_works(dims, b, top, rows=s.memit_rows * min(batch, n_req), prefix=s.memit_prefix,
                         suffix=s.memit_suffix, targets=s.memit_targets * min(batch, n_req), kl=min(batch, n_req),
                         steps=s.value_steps, count=full if n_req >= batch else 1)
    if n_req > batch and rest:
        values += value_works(dims, b, top, rows=s.memit_rows * rest, prefix=s.memit_prefix, suffix=s.memit_suffix,
                              targets=s.memit_targets * rest, kl=rest, steps=s.value_steps)
    prompts = 6 * n_req
    key_batches, bare_batches = math.ceil(prompts / 64), math.ceil(n_req / 64)
    keys = [layers_pass(dims, b, f"keys at layer {layer}", rows=prompts / key_batches, length=s.memit_key_len,
                        ctx=s.memit_key_len, layers=layer + 1, partial=True, count=key_batches) for layer in layers]
    keys += [layers_pass(dims, b, "h_L on the bare prompts", rows=n_req / bare_batches, length=s.memit_bare_len,
                         ctx=s.memit_bare_len, layers=top + 1, count=len(layers) * bare_batches)]
    update = replace(solve(dims, "(λC + KKᵀ)⁻¹K, R(..)ᵀ (float64)", n_req), count=len(layers))
    update = replace(update, f64_flops=update.f64_flops + 2 * n * n * n_req + 2 * d * n * n_req,
                     mem_bytes=update.mem_bytes + 3 * n * n * F64 + 4 * d * n * b)  # λC + KKᵀ in place; ΔW, W += ΔW, backup
    return {"context": generate(dims, b, "templates (10 tokens)", 5, s.gen_prompt, 10),
            "value": values, "key": keys, "update": [update]}


def eval_works(dims: Dims, b: int, s: Shapes) -> list[Work]:
    """``score_case`` before and after the edit (eval/scoring.py): the case's sequences packed as one
    prefix-tree row (a dense 4D mask: every node attends to the whole row in the kernel), the LM
    head at the scored positions. The edit itself is not counted."""
    return [layers_pass(dims, b, "scoring pass (before, after)", rows=1, length=s.eval_nodes, ctx=s.eval_nodes,
                        layers=dims.n_layers, head_rows=s.eval_scored, count=2)]


def steps(dims: Dims, b: int, s: Shapes) -> list[tuple[str, dict[str, list[Work]]]]:
    """Every step of the table: (name, {phase: passes})."""
    L, top = rome_layer(dims), memit_top_layer(dims)
    memit_layers = list(range(top - 4, top + 1))
    one_pass = {f"layer {layer}": stats_works(dims, b, [layer]) for layer in memit_layers}
    return [
        (f"stats, layer {L} (ROME), 200k tokens", {"forward + Σkkᵀ": stats_works(dims, b, [L])}),
        (f"stats, layers {memit_layers[0]}-{top} (MEMIT) in one pass", {"forward + Σkkᵀ": stats_works(dims, b, memit_layers)}),
        (f"stats, layers {memit_layers[0]}-{top}, one pass per layer", one_pass),
        (f"ROME edit, layer {L}", rome_phases(dims, b, s, L)),
        ("MEMIT edit, 1 request", memit_phases(dims, b, s, 1)),
        ("MEMIT edit, 100 requests", memit_phases(dims, b, s, 100)),
        ("MEMIT edit, 100 requests, v_batch_size=4 (24 GB cards)", memit_phases(dims, b, s, 100, batch=4)),
        ("evaluation of one CounterFact case", {"scoring": eval_works(dims, b, s)}),
    ]


# --- devices -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """Peak rates (dense, no sparsity) in TFLOP/s and device-memory bandwidth in GB/s."""

    name: str
    bf16: float  # tensor cores, float32 accumulation: the model's matmuls in bfloat16
    fp32: float  # plain FP32: PyTorch leaves TF32 off for float32 matmuls by default
    fp64: float  # the best FP64 rate (A100: FP64 tensor cores, which cuSOLVER's LU reaches through DGEMM)
    bandwidth: float


DEVICES = [
    # NVIDIA A100 80GB datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): BF16 tensor
    # 312 TFLOP/s (624 sparse), FP32 19.5 (TF32 tensor 156), FP64 9.7, FP64 tensor core 19.5;
    # HBM2e 2,039 GB/s (SXM; 1,935 GB/s PCIe).
    Device("A100-80GB", bf16=312, fp32=19.5, fp64=19.5, bandwidth=2039),
    # NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090: BF16 tensor with FP32
    # accumulate 165.2 TFLOP/s (330.4 sparse), FP32 82.6, FP64 1/64 of FP32 = 1.29 (no FP64 tensor
    # cores); GDDR6X 1,008 GB/s.
    Device("RTX 4090", bf16=165.2, fp32=82.6, fp64=1.29, bandwidth=1008),
]


@dataclass(frozen=True)
class Scenario:
    """What share of the peaks a pass gets, and the host's costs. Central values and the fast and
    slow ends of the range printed:

    - ``matmul``: share of the bfloat16 tensor-core peak that a large pass (hundreds to thousands
      of tokens) gets in eager PyTorch, all its kernels counted: assumed 40% (25-60%). Large GEMMs
      alone run at well over half the peak in cuBLAS; the norms, rotary embeddings, SiLU, casts and
      attention take the rest (on this CPU they are ~30% of a value step's time, torch.profiler).
      Small passes are limited by streaming the weights instead, which the bandwidth term counts.
    - ``fp32``: one large SGEMM per batch (2048 × 11008²), which cuBLAS runs near its peak.
    - ``fp64``: an LU of 11008² in float64, DGEMM-bound: assumed half the FP64 peak (30-70%).
    - ``bandwidth``: share of the datasheet bandwidth that streaming the weights gets.
    - ``host_layer``: seconds the host spends dispatching one decoder layer (~35 kernels and ~35
      views in transformers' Llama layer, counted with a TorchDispatchMode on SmolLM2, at ~10 µs
      each with Python and the CUDA launch); the GPU waits for it when a layer's own work is
      shorter (small batches). Compare ``--measure``'s dispatch time per layer on this CPU.
    - ``pcie``: host→device copies of C from pageable memory (PCIe 4.0 ×16 is 32 GB/s a way;
      pageable copies get a fraction of it).
    """

    name: str
    matmul: float
    fp32: float
    fp64: float
    bandwidth: float
    host_layer: float
    pcie: float  # GB/s


SCENARIOS = [Scenario("central", 0.40, 0.70, 0.50, 0.70, 0.5e-3, 10),
             Scenario("fast", 0.60, 0.90, 0.70, 0.85, 0.3e-3, 20),
             Scenario("slow", 0.25, 0.50, 0.30, 0.60, 1.0e-3, 6)]


def seconds(w: Work, dev: Device, sc: Scenario) -> tuple[float, str]:
    """A pass's time on ``dev`` (all its runs) and what bounds it."""
    compute = (w.model_flops / (dev.bf16 * T * sc.matmul) + w.f32_flops / (dev.fp32 * T * sc.fp32)
               + w.f64_flops / (dev.fp64 * T * sc.fp64))
    memory = w.mem_bytes / (dev.bandwidth * 1e9 * sc.bandwidth)
    host = w.layer_calls * sc.host_layer
    bound, t = max((("compute", compute), ("memory", memory), ("host", host)), key=lambda x: x[1])
    copy = w.host_bytes / (sc.pcie * 1e9)
    if copy > t:
        bound = "PCIe"
    return w.count * (t + copy), bound


def phase_seconds(works: list[Work], dev: Device, sc: Scenario) -> float:
    return sum(seconds(w, dev, sc)[0] for w in works)


def phase_bound(works: list[Work], dev: Device) -> str:
    """The bound of the pass that takes longest (central scenario)."""
    return max((seconds(w, dev, SCENARIOS[0]) for w in works), key=lambda x: x[0])[1]


def flops_cell(works: list[Work]) -> str:
    model = sum(w.count * w.model_flops for w in works)
    f32 = sum(w.count * w.f32_flops for w in works)
    f64 = sum(w.count * w.f64_flops for w in works)
    parts = [f"{x / T:,.0f} {name}" if x >= 100 * T else f"{x / T:.3g} {name}"
             for x, name in ((model, "bf16"), (f32, "fp32"), (f64, "fp64")) if x >= 1e-3 * T]  # not the µs ones
    return " + ".join(parts) or "0"


def time_cell(works: list[Work], dev: Device) -> str:
    central, fast, slow = (phase_seconds(works, dev, sc) for sc in SCENARIOS)
    return f"{fmt_s(central)} ({fmt_s(fast)}-{fmt_s(slow)})"


def fmt_s(t: float) -> str:
    return f"{t:.3g}" if t >= 0.01 else f"{t:.2g}"


def table(dims: Dims, s: Shapes) -> str:
    b = 2  # bfloat16
    head = (["step", "phase", "TFLOP"] + [f"{d.name} s, central (fast-slow)" for d in DEVICES]
            + ["bound (" + ", ".join(d.name for d in DEVICES) + ")"])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for step, phases in steps(dims, b, s):
        total: list[Work] = []
        for i, (phase, works) in enumerate(phases.items()):
            once = phase == "context"
            lines.append(f"| {'' if i else step} | {phase}{' (once per editor)' if once else ''} | {flops_cell(works)} | "
                         + " | ".join(time_cell(works, dev) for dev in DEVICES)
                         + f" | {', '.join(phase_bound(works, dev) for dev in DEVICES)} |")
            if not once:
                total += works
        if len(phases) > 1:
            what = "total per edit" if "edit" in step else "total"
            lines.append(f"| | **{what}** | {flops_cell(total)} | "
                         + " | ".join(f"**{time_cell(total, dev)}**" for dev in DEVICES) + " | |")
    return "\n".join(lines)


def breakdown(dims: Dims, s: Shapes) -> str:
    """Every pass of every step: runs, tokens, FLOPs, weights streamed, layers dispatched, A100 time."""
    b, dev, sc = 2, DEVICES[0], SCENARIOS[0]
    lines = [f"Passes of {dims.name} in bfloat16 (A100, central):"]
    for step, phases in steps(dims, b, s):
        lines.append(f"\n{step}")
        for phase, works in phases.items():
            for w in works:
                t, bound = seconds(w, dev, sc)
                lines.append(f"  {phase:8} {w.what:44} ×{w.count:<7.4g} tokens {w.tokens:<8.5g} "
                             f"{(w.model_flops + w.f32_flops + w.f64_flops) / T:9.4g} TFLOP/run  "
                             f"{w.mem_bytes / 2**30:6.2f} GiB/run  {w.layer_calls:3d} layers  {t:8.3g} s  {bound}")
    return "\n".join(lines)


# --- measurements on this CPU --------------------------------------------------------------------


def wait_for_quiet(max_load: float, max_wait: float) -> float:
    """Wait until the 1-minute load average is below ``max_load``; the load it found."""
    t0 = time.monotonic()
    while (load := os.getloadavg()[0]) >= max_load:
        if time.monotonic() - t0 > max_wait:
            raise SystemExit(f"the load average stayed at or above {max_load} for {max_wait:.0f} s (now {load:.2f})")
        print(f"  load {load:.2f} >= {max_load}: waiting", flush=True)
        time.sleep(30)
    return load


def best_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@dataclass
class CpuRates:
    """This CPU's float32 throughput (FLOP/s) at the shapes the passes use, measured with the
    model's own weights: the seven linear layers of the decoder layers at M rows, the LM head at M
    rows, kᵀk of a statistics batch, and the float64 solve of d_mlp². ``layer_overhead``: seconds
    per decoder layer that a one-token forward pass spends beyond its matmuls (dispatch)."""

    layers: dict[int, float] = field(default_factory=dict)
    head: dict[int, float] = field(default_factory=dict)
    f32: float = 0.0
    f64: float = 0.0
    layer_overhead: float = 0.0

    @classmethod
    def measure(cls, lm, dims: Dims, tokens: set[int], head_rows: set[int]) -> CpuRates:
        import torch

        rates = cls()
        linears = [[m for m in layer.modules() if isinstance(m, torch.nn.Linear)] for layer in lm.model.model.layers]
        with torch.no_grad():
            for m in sorted(tokens):
                use = linears if m <= 512 else linears[:3]  # big passes: three layers are enough to time
                xs = {f: torch.randn(m, f) for f in {lin.in_features for layer in use for lin in layer}}
                flops = 2 * m * sum(lin.in_features * lin.out_features for layer in use for lin in layer)
                rates.layers[m] = flops / best_time(lambda xs=xs, use=use: [lin(xs[lin.in_features]) for layer in use for lin in layer])
            for m in sorted(head_rows):
                x = torch.randn(m, dims.d)
                rates.head[m] = 2 * m * dims.d * dims.vocab / best_time(lambda x=x: lm.lm_head(x))
            k = torch.randn(2048, dims.d_mlp)
            rates.f32 = 2 * 2048 * dims.d_mlp**2 / best_time(lambda: k.T @ k)
            A = (k.T @ k).double() / 2048 + torch.eye(dims.d_mlp, dtype=torch.float64)
            v = torch.randn(dims.d_mlp, dtype=torch.float64)
            rates.f64 = 2 / 3 * dims.d_mlp**3 / best_time(lambda: torch.linalg.solve(A, v))
            ids = torch.tensor([[1]])
            one = statistics.median(best_time(lambda: lm.base(input_ids=ids, use_cache=False), 1) for _ in range(15))
            matmuls = 2 * dims.n_layers * layer_weights(dims) / rates.layers[1]
            rates.layer_overhead = (one - matmuls) / dims.n_layers
        return rates

    def seconds(self, w: Work, overhead: bool) -> float:
        t = w.layer_flops / self.layers[round(w.tokens)] if w.layer_flops else 0.0
        t += w.head_flops / self.head[w.head_rows] if w.head_flops else 0.0
        t += w.f32_flops / self.f32 + w.f64_flops / self.f64
        return w.count * (t + (w.layer_calls * self.layer_overhead if overhead else 0.0))


def measured_shapes(lm, editor, request, case) -> Shapes:
    """The exact shapes of ``request``'s ROME edit and of ``case``'s scoring on ``lm``."""
    from robustedit.editors.keys import subject_prompts
    from robustedit.editors.values import rewrite_batch
    from robustedit.eval.groups import score_items
    from robustedit.models.packing import pack
    from robustedit.models.text import encode, target_ids

    tok = lm.tokenizer
    templates = [c.format(request.prompt) for c in editor.context_templates()]
    rb = rewrite_batch(lm, [request], [templates], tuple(editor.config.kl_prompts))
    ids, _ = subject_prompts(tok, templates, request.subject)
    firsts: dict[tuple, int] = {}  # as eval/scoring.py's score_pairs
    for pairs in score_items(case).values():
        for prompt, target in pairs:
            p, t = encode(tok, prompt), target_ids(tok, prompt, target)
            seq = tuple(p + t[:-1])
            firsts[seq] = min(len(p) - 1, firsts.get(seq, len(p) - 1))
    rows = pack(list(firsts), 512)
    if len(rows) != 1:
        raise RuntimeError("case 0 should pack into one row")
    scored = {seq[: c + 1] for seq, first in firsts.items() for c in range(first, len(seq))}
    seed = max(len(tok(w)["input_ids"]) for w in ("The", "Therefore", "Because", "I", "You"))
    return Shapes(gen_prompt=seed, rome_rows=rb.forward.suffix_ids.shape[0], rome_prefix=rb.forward.prefix_len,
                  rome_suffix=rb.forward.suffix_ids.shape[1], rome_targets=len(rb.target_rows),
                  rome_key_len=max(map(len, ids)), eval_nodes=len(rows[0]), eval_scored=len(scored))


def measure(args) -> None:
    import torch

    from robustedit.data import load_cases
    from robustedit.editors import get_editor
    from robustedit.eval.runner import evaluate_case
    from robustedit.models.load import load_model
    from robustedit.request import EditRequest
    from robustedit.stats.corpus import token_windows
    from robustedit.stats.covariance import StatsConfig, compute_second_moments

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = load_model("smollm2")  # float32
    dims, b = smollm2(), 4
    editor = get_editor("rome", lm)
    L = editor.config.layer
    request = EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English")
    case = load_cases("counterfact", limit=1)[0]
    print(f"\n### SmolLM2-135M in float32 on this CPU ({torch.get_num_threads()} thread(s), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})\n")

    # the shapes need the context templates: generate them in a throw-away editor, so that the
    # measured edit below generates its own (the "context" phase)
    shapes = measured_shapes(lm, get_editor("rome", lm), request, case)
    stats_cfg = StatsConfig(n_tokens=16_384)
    phases = rome_phases(dims, b, shapes, L)
    evaluation = eval_works(dims, b, shapes)
    stats = stats_works(dims, b, [L], stats_cfg.n_tokens, stats_cfg.seq_len, stats_cfg.batch_size)
    works = [w for ws in phases.values() for w in ws] + evaluation + stats
    tokens = {round(w.tokens) for w in works if w.layer_flops} | {1}
    heads = {w.head_rows for w in works if w.head_flops}

    load = wait_for_quiet(args.max_load, args.max_wait)
    t0 = time.perf_counter()
    rates = CpuRates.measure(lm, dims, tokens, heads)
    print(f"- matmul throughput (load {load:.2f} before, {os.getloadavg()[0]:.2f} after, {time.perf_counter() - t0:.0f} s), "
          "GFLOP/s float32: decoder-layer linears at M rows: "
          + ", ".join(f"M={m} {r / 1e9:.0f}" for m, r in rates.layers.items())
          + "; LM head: " + ", ".join(f"M={m} {r / 1e9:.0f}" for m, r in rates.head.items())
          + f"; kᵀk (2048 × {dims.d_mlp}) {rates.f32 / 1e9:.0f}; float64 solve of {dims.d_mlp}² {rates.f64 / 1e9:.0f}; "
          f"dispatch overhead {rates.layer_overhead * 1e3:.2f} ms per decoder layer (one-token forward pass)")

    load = wait_for_quiet(args.max_load, args.max_wait)
    delta = editor.edit([request])  # the first edit of a fresh editor: templates generated, C read from the cache
    after = os.getloadavg()[0]
    timing, steps_taken = delta.info["timing"], delta.info["value_steps"]
    phases = rome_phases(dims, b, replace(shapes, value_steps=steps_taken), L)
    rows = [(f"ROME {p}", timing[f"{p}_s"], phases.get(p)) for p in ("context", "stats", "key", "value", "update")]

    load2 = wait_for_quiet(args.max_load, args.max_wait)
    record = evaluate_case(editor, case)  # its own ROME edit, then scoring before and after
    rows.append(("evaluation of case 0 (eval_s)", record["timing"]["eval_s"], evaluation))
    after2 = os.getloadavg()[0]

    load3 = wait_for_quiet(args.max_load, args.max_wait)
    t0 = time.perf_counter()
    token_windows(lm.tokenizer, stats_cfg.corpus, stats_cfg.n_tokens, stats_cfg.seq_len)
    tokenising = time.perf_counter() - t0
    t0 = time.perf_counter()
    compute_second_moments(lm, [L], stats_cfg, show_progress=False)  # not cached: computed, not saved
    rows.append((f"stats, layer {L}, {stats_cfg.n_tokens} tokens (tokenising {tokenising:.2f} s not predicted)",
                 time.perf_counter() - t0 - tokenising, stats))
    after3 = os.getloadavg()[0]

    print(f"- shapes: value batch {shapes.rome_rows} rows, prefix {shapes.rome_prefix}, suffix {shapes.rome_suffix}, "
          f"{shapes.rome_targets} target tokens, {steps_taken} Adam steps; key prompts {shapes.rome_key_len} tokens; "
          f"case 0 scores {shapes.eval_scored} positions of a {shapes.eval_nodes}-node row")
    print(f"- load average (1 min): edit {load:.2f} → {after:.2f}; evaluation {load2:.2f} → {after2:.2f}; "
          f"statistics {load3:.2f} → {after3:.2f}\n")
    print("| phase | measured s | FLOPs / throughput s | ratio | + dispatch s | ratio |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for name, t, works in rows:
        if not works:
            print(f"| {name} | {t:.3f} | (no FLOPs: C read from the disk cache) | | | |")
            continue
        bare = sum(rates.seconds(w, False) for w in works)
        full = sum(rates.seconds(w, True) for w in works)
        ratios.append(t / bare)
        print(f"| {name} | {t:.3f} | {bare:.3f} | {t / bare:.2f} | {full:.3f} | {t / full:.2f} |")
    if max(ratios) > 3 or min(ratios) < 1 / 3:
        print("\nSome phase is off by more than 3×: see which, and whether its passes are small (dispatch-bound) "
              "or its time goes to work the FLOP count leaves out.")
    else:
        print(f"\nEvery phase is within {max(max(ratios), 1 / min(ratios)):.2f}× of FLOPs / throughput. What is left "
              "is the work besides matmuls (norms, rotary, SiLU, attention, KV-cache copies, Adam), which the "
              "throughput measured on bare matmuls does not include.")
    second = {k: round(v, 3) for k, v in record["timing"].items()}
    print(f"\nThe evaluation's own edit (templates kept): {second}")
    rates2 = CpuRates.measure(lm, dims, {min(tokens), max(tokens)}, set())
    print(f"Throughput again at the end (load {os.getloadavg()[0]:.2f}): "
          + ", ".join(f"M={m} {r / 1e9:.0f} GFLOP/s (was {rates.layers[m] / 1e9:.0f})" for m, r in rates2.layers.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measure", action="store_true", help="also check the FLOP model with SmolLM2 on this CPU")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for --measure")
    ap.add_argument("--max-load", type=float, default=2.5, help="measure only below this 1-minute load average")
    ap.add_argument("--max-wait", type=float, default=3600, help="seconds to wait for the load to drop")
    ap.add_argument("--passes", action="store_true", help="also print every pass of every step")
    args = ap.parse_args()
    s = Shapes()
    print(f"Estimated seconds per step of a {LLAMA2_7B.name} edit in bfloat16 "
          f"({LLAMA2_7B.params() / 1e9:.2f}B parameters), from FLOP counts; central (fast-slow) scenario.\n")
    print(table(LLAMA2_7B, s))
    print("\nAssumptions: " + "; ".join(
        f"{sc.name}: bf16 matmuls {sc.matmul:.0%} of peak, fp32 {sc.fp32:.0%}, fp64 {sc.fp64:.0%}, "
        f"bandwidth {sc.bandwidth:.0%}, host {sc.host_layer * 1e3:.1f} ms per decoder layer, PCIe {sc.pcie:g} GB/s"
        for sc in SCENARIOS))
    print("Peaks: " + "; ".join(f"{d.name}: bf16 {d.bf16:g}, fp32 {d.fp32:g}, fp64 {d.fp64:g} TFLOP/s, "
                                f"{d.bandwidth:g} GB/s" for d in DEVICES))
    rome = dict(steps(LLAMA2_7B, 2, s))
    per_case = [w for k, ws in rome[f"ROME edit, layer {rome_layer(LLAMA2_7B)}"].items() if k != "context" for w in ws]
    per_case += rome["evaluation of one CounterFact case"]["scoring"]
    print("\n`robustedit evaluate --editor rome`, per case (edit + scoring): " + "; ".join(
        f"{d.name} {time_cell(per_case, d)} s, 200 cases {phase_seconds(per_case, d, SCENARIOS[0]) * 200 / 60:.1f} min"
        for d in DEVICES) + " (central), besides loading the model and the statistics.")
    if args.passes:
        print()
        print(breakdown(LLAMA2_7B, s))
    if args.measure:
        measure(args)


if __name__ == "__main__":
    main()
