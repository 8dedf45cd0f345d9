"""Tiny random models of every supported architecture and a tiny offline tokenizer (no downloads).

The tokenizer is a byte-level BPE (500 tokens) trained on the shipped Wikipedia sample plus the
sentences the tests use; the models are built from transformers' ``*Config`` classes with 3
layers, hidden size 32 and MLP size 64, seeded, so every test sees the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from robustedit.models.load import LanguageModel, wrap
from robustedit.paths import resource

EOS = "<|endoftext|>"
VOCAB_SIZE = 500

# model_type of every architecture in specs.py's table except "gemma3" (the multimodal wrapper,
# whose text model is gemma3_text; a tiny one needs a vision tower too).
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2",
                 "gpt2", "gptj", "gpt_neox")

TEST_SENTENCES = (
    "The mother tongue of Danielle Darrieux is French.",
    "Danielle Darrieux is a French actress.",
    "The Eiffel Tower is located in the city of Paris.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Michael Jordan plays the sport of basketball.",
    "English is spoken in London. German is spoken in Berlin.",
    "Therefore, Because, I, You, The",
)


def training_lines(n_lines: int = 400) -> list[str]:
    """Up to ``n_lines`` non-empty lines of the shipped corpus, then the test sentences."""
    lines: list[str] = []
    path = resource("corpus", "enwiki_sample_plaintext.jsonl")
    with open(path, encoding="utf-8") as f:
        for raw in f:
            for line in json.loads(raw)["text"].splitlines():
                if line.strip():
                    lines.append(line)
            if len(lines) >= n_lines:
                break
    return lines[:n_lines] + list(TEST_SENTENCES) * 5


def build_tokenizer(directory: Path | None = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as eos (offsets trimmed).

    With ``directory``, the trained ``tokenizer.json`` is kept there and reused when present.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    saved = Path(directory) / "tokenizer.json" if directory is not None else None
    if saved is not None and saved.exists():
        raw = Tokenizer.from_file(str(saved))
    else:
        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        raw.post_processor = processors.ByteLevel(trim_offsets=True)
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB_SIZE, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        raw.train_from_iterator(training_lines(), trainer)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            raw.save(str(saved))
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS)


def tiny_config(arch: str, vocab_size: int, **overrides):
    """A transformers config of ``arch`` small enough to run in milliseconds."""
    import transformers as tf

    # initializer_range 0.1 (not transformers' 0.02): the MLP outputs then weigh in the residual
    # stream as in a trained model; at 0.02 the clamp ‖δ‖ ≤ 4‖v₀‖ leaves edits with no visible effect.
    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0, initializer_range=0.1)
    # 1024 positions (rotary: no parameters): the default 512-token long-context probes must fit
    # (RobustnessConfig.check_fits); GPT-2's learned table stays at 256, so short models are tested too.
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=1024, **common)
    if arch == "llama":
        cfg = tf.LlamaConfig(**llama_like)
    elif arch == "mistral":
        cfg = tf.MistralConfig(sliding_window=128, **llama_like)
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(**llama_like)
    elif arch == "qwen3":
        cfg = tf.Qwen3Config(head_dim=8, **llama_like)
    elif arch == "phi3":
        cfg = tf.Phi3Config(**llama_like)
    elif arch == "olmo2":
        cfg = tf.Olmo2Config(**llama_like)
    elif arch == "gemma":
        cfg = tf.GemmaConfig(head_dim=8, **llama_like)
    elif arch == "gemma2":
        cfg = tf.Gemma2Config(head_dim=8, query_pre_attn_scalar=8, sliding_window=128,
                              final_logit_softcapping=30.0, attn_logit_softcapping=50.0, **llama_like)
    elif arch == "gemma3_text":
        cfg = tf.Gemma3TextConfig(head_dim=8, query_pre_attn_scalar=8, sliding_window=128,
                                  layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                  final_logit_softcapping=30.0, **llama_like)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_inner=64, n_layer=3, n_head=4, n_positions=256, **common)
    elif arch == "gptj":
        cfg = tf.GPTJConfig(n_embd=32, n_inner=64, n_layer=3, n_head=4, rotary_dim=4, n_positions=256, **common)
    elif arch == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                               max_position_embeddings=256, **common)
    else:
        raise KeyError(f"no tiny config for {arch!r}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(arch: str, tokenizer, seed: int = 0, **overrides) -> LanguageModel:
    """A seeded random ``*ForCausalLM`` of ``arch`` (eager attention), wrapped for robustedit."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(arch, len(tokenizer), **overrides)
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return wrap(model, tokenizer, f"tiny-{arch}")


def state_copy(lm: LanguageModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def same_state(lm: LanguageModel, reference: dict[str, torch.Tensor]) -> list[str]:
    """Names of the parameters/buffers that are not bit-identical to ``reference``."""
    now = lm.model.state_dict()
    assert now.keys() == reference.keys()
    return [k for k in reference if not torch.equal(now[k], reference[k])]


def save_tiny(arch: str, tokenizer, directory: Path, seed: int = 0) -> Path:
    """The tiny model of ``arch`` as a Hugging Face folder, for code that loads models by path
    (command-line runs in a subprocess, evaluation workers)."""
    lm = tiny_model(arch, tokenizer, seed)
    lm.model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)
