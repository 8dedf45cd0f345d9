"""Memory each step of an edit needs on an accelerator, computed from the model's dimensions.

For Llama-2-7B (the dimensions of its published config, hard-coded below: nothing is downloaded)
and SmolLM2-135M, in bfloat16 and float32: the weights, the key statistics C (``robustedit
stats``: one layer for ROME, five in one pass for MEMIT), a ROME edit (value optimisation, then the
update), a MEMIT edit of a batch (five layers), the evaluation forward passes and the size of a
saved edit. Every number is a sum of tensor sizes written out in the functions below, each with
the code it follows; what an allocator, the CUDA context or fragmentation add comes on top.

``--measure`` checks the computation on this CPU with SmolLM2: the bytes autograd saves in one
value-optimisation step (counted with ``torch.autograd.graph.saved_tensors_hooks``, float32 and
bfloat16) against the formula, and the resident memory of the process while it loads the model
and makes one whole ROME edit against the computed weights and working memory.

    python benchmarks/gpu_memory.py               # the tables (a second)
    python benchmarks/gpu_memory.py --measure     # + the SmolLM2 measurements (~1 min, statistics cached)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass

GiB = 2**30
F64, F32 = 8, 4


@dataclass(frozen=True)
class Dims:
    """A Llama-like decoder (SwiGLU MLP, RMSNorm, rotary attention; SmolLM2 is one)."""

    name: str
    d: int  # hidden_size
    d_mlp: int  # intermediate_size: the width of the keys C is made of
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    tied: bool  # tie_word_embeddings

    @property
    def d_kv(self) -> int:
        return self.d // self.n_heads * self.n_kv_heads

    def params(self) -> int:
        attn = 2 * self.d * self.d + 2 * self.d * self.d_kv  # q, o; k, v
        per_layer = attn + 3 * self.d * self.d_mlp + 2 * self.d  # + gate, up, down; two norms
        return self.vocab * self.d * (1 if self.tied else 2) + self.n_layers * per_layer + self.d


# meta-llama/Llama-2-7b-hf, config.json (Touvron et al. 2023, "Llama 2", Table 1 / model card):
# hidden_size 4096, intermediate_size 11008, num_hidden_layers 32, num_attention_heads 32,
# num_key_value_heads 32, vocab_size 32000, tie_word_embeddings false -> 6,738,415,616 parameters.
LLAMA2_7B = Dims("Llama-2-7B", d=4096, d_mlp=11008, n_layers=32, n_heads=32, n_kv_heads=32, vocab=32000, tied=False)
# HuggingFaceTB/SmolLM2-135M-Instruct, config.json (the embedded model; read from its converted
# folder when present, see smollm2()): 134,515,008 parameters.
SMOLLM2 = Dims("SmolLM2-135M", d=576, d_mlp=1536, n_layers=30, n_heads=9, n_kv_heads=3, vocab=49152, tied=True)


def smollm2() -> Dims:
    """SmolLM2's dimensions from the embedded model's converted config, if it is on this machine."""
    try:
        from robustedit.models.embedded import EMBEDDED

        cfg = json.loads((EMBEDDED.get("smollm2").cache_dir / "config.json").read_text())
    except (OSError, ValueError, ImportError):
        return SMOLLM2
    return Dims("SmolLM2-135M", cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"],
                cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"],
                bool(cfg.get("tie_word_embeddings", False)))


@dataclass(frozen=True)
class Geometry:
    """The shapes of the work, from robustedit's defaults and measured CounterFact batches.

    ``prefix`` / ``suffix``: the longest prefix (template + prompt up to the subject's last token)
    and suffix (from there to the end of the teacher-forced target) of a value-optimisation batch,
    maxima over CounterFact cases 0-19 with SmolLM2's tokenizer (``--measure`` prints them for the
    case it edits); ``targets``: target tokens scored per request (maximum over the same cases).
    """

    rome_rows: int = 22  # ROMEConfig: 1 + 10 + 10 context templates, + 1 KL prompt
    rome_targets: int = 42
    memit_rows: int = 7  # MEMITConfig: 1 + 5 context templates, + 1 KL prompt, per request
    memit_targets: int = 12
    memit_requests: int = 16  # MEMITConfig.v_batch_size: requests whose values are optimised together
    memit_layers: int = 5
    prefix: int = 24
    suffix: int = 6
    stats_batch: int = 8  # StatsConfig: 8 windows of 256 tokens per forward pass
    stats_seq: int = 256
    eval_tokens: int = 4096  # score_pairs(max_tokens=4096, max_row_tokens=512)
    eval_row: int = 512
    eval_positions: int = 128  # scored positions per batch (a CounterFact case scores ~60)


def rome_layer(dims: Dims) -> int:
    """The layer robustedit edits by default: SmolLM2's shipped file, else the depth rule."""
    if dims.name.startswith("SmolLM2"):
        return 2
    from robustedit.editors.settings import rome_layer_for_depth

    return rome_layer_for_depth(dims.n_layers)


def memit_top_layer(dims: Dims) -> int:
    if dims.name.startswith("SmolLM2"):
        return 6
    from robustedit.editors.settings import memit_layers_for_depth

    return memit_layers_for_depth(dims.n_layers)[-1]


# --- the parts ----------------------------------------------------------------------------------


def saved_per_token(dims: Dims, b: int) -> int:
    """Bytes autograd keeps per token per decoder layer when only the activations need gradients
    (the weights are frozen, so no layer input is kept for a weight gradient), k and v excepted.
    transformers' Llama layer keeps: the two RMSNorm inputs upcast to float32 and their 1/rms
    (2d + 2 float32), q and the attention output (2d), the attention's log-sum-exp (one float32 per
    head), and the gate, up and gated products (3 d_mlp). Counted with saved_tensors_hooks on
    SmolLM2 (``--measure``): 4·(4d + 3·d_mlp + H + 2) + the k, v bytes in float32."""
    return F32 * (2 * dims.d + 2 + dims.n_heads) + b * (2 * dims.d + 3 * dims.d_mlp)


def kv_bytes(dims: Dims, b: int, rows: int, length: int, layers: int) -> int:
    """Keys and values of ``rows`` × ``length`` tokens in ``layers`` layers."""
    return 2 * layers * rows * length * dims.d_kv * b


def value_saved(dims: Dims, b: int, g: Geometry, layer: int, rows: int, targets: int, requests: int) -> dict:
    """What autograd keeps for the backward pass of one value-optimisation step at ``layer``
    (editors/values.py; δ is added at the output of ``layer``, so the layers above it are run with
    gradients: n_layers - layer - 1 of them). Each keeps ``saved_per_token`` for the suffix tokens
    and the keys and values of prefix + suffix, expanded to every query head (transformers'
    repeat_kv, a copy when the model groups its k, v heads); the final norm keeps its float32 input;
    the LM head runs only where a target token or the KL prompt is read, and its float32
    log-softmax is kept."""
    P, S, run = g.prefix, g.suffix, dims.n_layers - layer - 1
    return {
        f"activations of {run} layers": run * rows * S * saved_per_token(dims, b) + rows * S * (dims.d + 1) * F32,
        "their k, v (every head)": 2 * run * rows * (P + S) * dims.d * b + rows * S * (P + S) * b,  # + the mask
        "log-softmax at targets + KL": (targets + requests) * dims.vocab * F32,
    }


def value_phase(dims: Dims, b: int, g: Geometry, layer: int, rows: int, targets: int, requests: int) -> dict:
    """Working memory of one Adam step of the value optimisation: what autograd keeps
    (``value_saved``), and besides it the prefix's KV cache (models/prefix.py: the prefix runs once
    into a cache, kept with the recorded pass's copy extended by the suffix; each step extends a
    further copy, the saved k, v themselves unless k, v heads are grouped), the logits before the
    float32 log-softmax and its gradient."""
    P, S, N = g.prefix, g.suffix, dims.n_layers
    parts = value_saved(dims, b, g, layer, rows, targets, requests)
    copies = kv_bytes(dims, b, rows, P, N) + kv_bytes(dims, b, rows, P + S, N)
    if dims.n_kv_heads < dims.n_heads:
        copies += kv_bytes(dims, b, rows, P + S, N)
    parts["prefix KV cache copies"] = copies
    parts["logits + gradient"] = (targets + requests) * dims.vocab * (b + F32)
    return parts


def solve_phase(dims: Dims) -> dict:
    """An update's linear algebra at one layer where the keys are (editors/rome.py, memit.py):
    C in float64 copied to the device, and the LU factorisation ``torch.linalg.solve`` makes of it
    (MEMIT: λC + KKᵀ built in place in the copy, plus KKᵀ before it is added: also two at a time)."""
    return {"C (float64) + its LU factorisation": 2 * dims.d_mlp**2 * F64}


def weights(dims: Dims, b: int) -> int:
    return dims.params() * b


def down_proj(dims: Dims, b: int) -> int:
    return dims.d * dims.d_mlp * b


def steps(dims: Dims, b: int, g: Geometry) -> list[tuple[str, dict, str]]:
    """(step, {part: bytes} on the device besides the weights, what it keeps in host memory)."""
    w = weights(dims, b)
    f2 = dims.d_mlp**2
    BT = g.stats_batch * g.stats_seq
    out = []
    for n in (1, g.memit_layers):
        out.append((f"robustedit stats, {n} layer{'s' if n > 1 else ''} in one pass", {
            "weights": w,
            "float64 sums of k kᵀ": n * f2 * F64 + f2 * F64,  # + the last division before .cpu()
            "float32 product k kᵀ of a batch": f2 * F32,
            "keys of the batch": n * BT * dims.d_mlp * b + BT * dims.d_mlp * F32,
            "one layer's activations (batch)": BT * saved_per_token(dims, b),
        }, f"C: {n} × {f2 * F64 / GiB:.2f} GiB (float64), also on disk"))
    L = rome_layer(dims)
    value = value_phase(dims, b, g, L, g.rome_rows, g.rome_targets, 1)
    solve = solve_phase(dims)
    phase = value if sum(value.values()) >= sum(solve.values()) else solve
    out.append(((f"ROME edit (layer {L}; value step {sum(value.values()) / GiB:.2f}, solve {sum(solve.values()) / GiB:.2f}: "
                 "the larger counts)"), {
        "weights": w, **phase, "ΔW": down_proj(dims, b)}, f"C of layer {L}: {f2 * F64 / GiB:.2f} GiB"))
    Lz = memit_top_layer(dims)
    rows, targets = g.memit_requests * g.memit_rows, g.memit_requests * g.memit_targets
    value = value_phase(dims, b, g, Lz, rows, targets, g.memit_requests)
    phase = value if sum(value.values()) >= sum(solve.values()) else solve
    out.append(((f"MEMIT edit ({g.memit_layers} layers to {Lz}, values of {g.memit_requests} requests at once; value step "
                 f"{sum(value.values()) / GiB:.2f}, solve {sum(solve.values()) / GiB:.2f}: the larger counts)"), {
        "weights": w, **phase, "ΔW and backups of 5 layers": 2 * g.memit_layers * down_proj(dims, b)},
        f"C of {g.memit_layers} layers: {g.memit_layers * f2 * F64 / GiB:.2f} GiB"))
    rows = g.eval_tokens // g.eval_row
    out.append((f"evaluation (scoring batches of {g.eval_tokens} tokens)", {
        "weights": w, "ROME edit applied: backup of W": down_proj(dims, b),
        "one layer's activations": g.eval_tokens * saved_per_token(dims, b),
        "packed attention mask": rows * g.eval_row**2 * (b + 1),
        "logits at scored positions": g.eval_positions * dims.vocab * (b + 2 * F32)}, ""))
    return out


def table(models: list[Dims], g: Geometry) -> str:
    """One row per step: peak device memory per model and dtype, and the host memory of the first model."""
    dtypes = (("bfloat16", 2), ("float32", 4))
    lines = ["| step | " + " | ".join(f"{m.name} {n}" for m in models for n, _ in dtypes)
             + f" | host memory, {models[0].name} |", "|---" * (2 + len(models) * len(dtypes)) + "|"]
    per_model = {(m.name, n): steps(m, b, g) for m in models for n, b in dtypes}
    lines.append("| weights (load) | " + " | ".join(f"{weights(m, b) / GiB:.2f}" for m in models for _, b in dtypes) + " | |")
    for i, (name, _, host) in enumerate(per_model[(models[0].name, "bfloat16")]):
        cells = [f"{sum(per_model[(m.name, n)][i][1].values()) / GiB:.2f}" for m in models for n, _ in dtypes]
        lines.append(f"| {name.split(' (')[0]} | " + " | ".join(cells) + f" | {host} |")
    for what, n in (("ROME", 1), ("MEMIT, 5 layers", 5)):
        cells = [f"{n * down_proj(m, b) / 2**20:.0f} MiB" for m in models for _, b in dtypes]
        lines.append(f"| saved edit, {what} (delta.safetensors, on disk) | " + " | ".join(cells) + " | |")
    notes = [f"{m.name}: ROME layer {rome_layer(m)}, MEMIT layers to {memit_top_layer(m)}" for m in models]
    lines += ["", "; ".join(notes) + f"; MEMIT optimises the values of {g.memit_requests} requests at once "
              f"(v_batch_size), {g.memit_rows} rows each; value batches of prefix {g.prefix} and suffix {g.suffix} tokens."]
    return "\n".join(lines)


def breakdown(dims: Dims, b: int, dtype: str, g: Geometry) -> str:
    lines = [f"{dims.name} in {dtype} ({dims.params():,} parameters, d_mlp {dims.d_mlp}), GiB:", ""]
    for name, parts, host in steps(dims, b, g):
        lines.append(f"- {name}: {sum(parts.values()) / GiB:.2f}"
                     + "".join(f"\n    {k}: {v / GiB:.3f}" for k, v in parts.items()) + (f"\n    host: {host}" if host else ""))
    return "\n".join(lines)


# --- measurements on this CPU -------------------------------------------------------------------


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The highest resident memory of this process while the block runs, sampled every 2 ms."""

    def __enter__(self):
        self.base, self.peak, self._stop = rss(), rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def saved_bytes_of_one_value_step(lm, editor, request) -> tuple[int, Geometry]:
    """Bytes autograd saves in the first value-optimisation step of ``request`` (storages counted
    once, parameters excluded), and the geometry of that case's batch."""
    import torch

    from robustedit.editors.values import optimize_value, rewrite_batch

    cfg = editor.config
    templates = [c.format(request.prompt) for c in editor.context_templates()]
    rb = rewrite_batch(lm, [request], [templates], tuple(cfg.kl_prompts))
    geometry = Geometry(rome_rows=rb.forward.suffix_ids.shape[0], rome_targets=len(rb.target_rows),
                        prefix=rb.forward.prefix_len, suffix=rb.forward.suffix_ids.shape[1])
    params = {p.untyped_storage().data_ptr() for p in lm.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        optimize_value(lm, cfg.layer, request, templates, dataclasses.replace(cfg.value, num_steps=1))
    return sum(seen.values()), geometry


def measure(dtype: str) -> None:
    import torch

    from robustedit.data import load_cases
    from robustedit.editors import get_editor
    from robustedit.models.load import load_model

    torch.manual_seed(0)
    b = {"bfloat16": 2, "float32": 4}[dtype]
    before = rss()
    with PeakRSS() as load:
        lm = load_model("smollm2", dtype=dtype)
    dims = smollm2()
    print(f"\n### SmolLM2 in {dtype}, measured on this CPU\n")
    with torch.no_grad():
        lm.model(input_ids=torch.tensor([[1, 2, 3]]))  # every weight read once (fp32 files are mapped lazily)
    counted = sum(p.numel() for p in lm.model.parameters())
    print(f"- loading: {counted:,} parameters (computed {dims.params():,}); resident memory after a forward pass "
          f"+{(rss() - before) / GiB:.3f} GiB (peak while loading +{(load.peak - before) / GiB:.3f}); "
          f"weights computed {weights(dims, b) / GiB:.3f} GiB")
    editor = get_editor("rome", lm)
    request = load_cases("counterfact", limit=1)[0].request
    measured, g = saved_bytes_of_one_value_step(lm, editor, request)
    predicted = sum(value_saved(dims, b, g, editor.config.layer, g.rome_rows, g.rome_targets, 1).values())
    print(f"- one value step of CounterFact case 0 (rows {g.rome_rows}, prefix {g.prefix}, suffix {g.suffix}, "
          f"{g.rome_targets} target tokens, layer {editor.config.layer}): autograd saved {measured / 2**20:.1f} MiB, "
          f"computed {predicted / 2**20:.1f} MiB (ratio {measured / predicted:.3f})")
    if dtype != "float32":
        return  # the statistics of this dtype are not cached: the whole edit is measured in float32
    editor.prepare()  # statistics from the cache (computed once, ~1 min, if missing) and templates
    with PeakRSS() as edit:
        editor.edit([request])
    v = value_phase(dims, b, g, editor.config.layer, g.rome_rows, g.rome_targets, 1)
    work = max(sum(v.values()), sum(solve_phase(dims).values())) + down_proj(dims, b)
    print(f"- one whole ROME edit: peak resident memory +{(edit.peak - edit.base) / 2**20:.1f} MiB over the loaded, "
          f"prepared editor; computed working memory {work / 2**20:.1f} MiB (ratio {(edit.peak - edit.base) / work:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measure", action="store_true", help="also measure SmolLM2 on this CPU")
    ap.add_argument("--prefix", type=int, default=Geometry.prefix, help="longest prefix of a value batch, tokens")
    ap.add_argument("--suffix", type=int, default=Geometry.suffix, help="longest suffix of a value batch, tokens")
    ap.add_argument("--memit-batch", type=int, default=Geometry.memit_requests,
                    help="MEMIT's v_batch_size (requests whose values are optimised together)")
    args = ap.parse_args()
    g = Geometry(prefix=args.prefix, suffix=args.suffix, memit_requests=args.memit_batch)
    models = [LLAMA2_7B, smollm2()]
    print("Peak memory on the device (GiB) of each step: weights included, CUDA context and allocator not.\n")
    print(table(models, g))
    print()
    for dims in models:
        for dtype, b in (("bfloat16", 2), ("float32", 4)):
            print(breakdown(dims, b, dtype, g))
            print()
    if args.measure:
        for dtype in ("float32", "bfloat16"):
            measure(dtype)


if __name__ == "__main__":
    main()
