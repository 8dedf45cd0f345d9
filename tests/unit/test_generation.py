"""ROME's generation tests: n-gram entropy on hand-made text, TF-IDF consistency, and sampling
that is seeded per call, independent of batching and left padding, and works with edit hooks."""

import math

import pytest
import torch

from robustedit.config import from_dict
from robustedit.data import Case
from robustedit.editors.adaptors import KeyAdaptor, install, uninstall
from robustedit.editors.memory import EditMemory, MemoryEdit
from robustedit.editors.memory import install as install_memory
from robustedit.editors.memory import uninstall as uninstall_memory
from robustedit.errors import UserError
from robustedit.eval.generation import (
    GenerationConfig,
    TfidfReference,
    consistency_score,
    generate_texts,
    generation_scores,
    mean_ngram_entropy,
    ngram_entropy,
    reference_documents,
    reference_prompts,
    reference_texts,
    words,
)
from robustedit.request import EditRequest

PROMPTS = ("The mother tongue of Danielle Darrieux is", "Paris is",
           "The Eiffel Tower is located in the city of", "Michael Jordan plays")
LONG = "The capital of France is Paris, and the capital of Italy is Rome. English is spoken in London. German is"
SHORT_CFG = GenerationConfig(max_new_tokens=20)
GREEDY = GenerationConfig(max_new_tokens=40, top_k=1)


def case(generation=PROMPTS, attribute=("The mother tongue of Jean Gabin is",)) -> Case:
    return Case("7", EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
                attribute_prompts=attribute, generation_prompts=generation)


# --- config ---------------------------------------------------------------------------------------

def test_config_defaults_follow_rome():
    cfg = GenerationConfig()
    assert (cfg.max_new_tokens, cfg.top_k, cfg.n_prompts) == (100, 5, 10)


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"top_k": 0}, {"n_prompts": -1}, {"batch_size": 0},
                                 {"top_k": 2.5}, {"seed": "x"}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(UserError):
        GenerationConfig(**bad)
    with pytest.raises(UserError):
        from_dict(GenerationConfig, bad)


# --- fluency --------------------------------------------------------------------------------------

def test_words_split_like_nltk_word_tokenize():
    assert words("Darrieux's tongue isn't French, it's well-known: 1,000 times 3.14...") == [
        "Darrieux", "'s", "tongue", "is", "n't", "French", ",", "it", "'s", "well-known", ":",
        "1,000", "times", "3.14", "..."]


def test_ngram_entropy_of_tiny_texts_by_hand():
    # "the cat sat": bigrams {the cat, cat sat} → 1 bit; one trigram → 0 bits; mean(2/3·1, 4/3·0)
    assert ngram_entropy("the cat sat") == pytest.approx(1 / 3)
    # "a b a b": bigrams ab ×2, ba ×1 → H(2/3, 1/3); trigrams aba, bab → 1 bit
    h2 = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("a b a b", ns=(2,), weights=(1.0,)) == pytest.approx(h2)
    assert ngram_entropy("") == 0.0 and ngram_entropy("word") == 0.0  # no n-grams: 0, not nan


def test_repetition_has_lower_entropy_than_varied_text():
    repeated = "Paris is the capital of France. " * 8
    varied = ("Paris is the capital of France. Its museums hold paintings from every century, and "
              "millions of visitors climb the Eiffel Tower each year. The Seine divides the city into "
              "a northern and a southern bank, crossed by dozens of bridges.")
    assert len(words(repeated)) >= len(words(varied))  # not merely a longer text
    assert ngram_entropy(repeated) < ngram_entropy(varied) - 1.0
    assert mean_ngram_entropy([repeated, varied]) == pytest.approx(
        (ngram_entropy(repeated) + ngram_entropy(varied)) / 2)


# --- consistency ----------------------------------------------------------------------------------

def test_reference_documents_are_paragraphs_without_headings():
    docs = reference_documents()
    assert len(docs) > 1000 and not any(d.startswith("=") for d in docs)


def test_tfidf_consistency_identical_disjoint_symmetric():
    ref = TfidfReference()
    vocab = ref.vectorizer.vocabulary_
    a = ["The lobster lives in the ocean near rocks."]
    b = ["Her album of music won a prize."]
    assert {"lobster", "ocean", "album", "music"} <= vocab.keys()
    assert ref.consistency(a, a) == pytest.approx(1.0)
    assert ref.consistency(a, b) == 0.0  # "the" / "of" / "in" differ too: no shared word
    c = ["The lobster album was recorded near the ocean."]
    assert 0 < ref.consistency(a, c) < 1
    assert ref.consistency(a, c) == pytest.approx(ref.consistency(c, a))
    assert ref.consistency(["zzqx qqzz"], a) == 0.0  # no in-vocabulary word
    assert consistency_score(a, c) == pytest.approx(ref.consistency(a, c))


def test_tfidf_pools_texts_as_rome_joins_them():
    ref = TfidfReference()
    texts = ["The lobster lives in the ocean.", "A lobster has two claws, a lobster is blue."]
    assert ref.vector(texts) == pytest.approx(ref.vector([" ".join(texts)]))
    lobster = ["Lobsters are crustaceans with claws that live on the sea floor."]
    music = ["The band released a music album and toured with the single."]
    assert ref.consistency(texts, lobster) > ref.consistency(texts, music)
    with pytest.raises(ValueError):
        ref.vector([])


# --- sampling -------------------------------------------------------------------------------------

@pytest.fixture(params=["llama", "gpt2"])
def lm(request, tiny_lm_factory):
    return tiny_lm_factory(request.param)


def test_texts_are_prompt_plus_continuation(lm):
    texts = generate_texts(lm, PROMPTS, SHORT_CFG, "k")
    assert len(texts) == len(PROMPTS)
    assert all(t.startswith(p) and len(t) > len(p) for t, p in zip(texts, PROMPTS))


def test_sampling_is_seeded_per_call_not_by_the_global_rng(lm):
    first = generate_texts(lm, PROMPTS, SHORT_CFG, "case-1")
    torch.manual_seed(12345)
    torch.rand(1000)
    state = torch.get_rng_state()
    again = generate_texts(lm, PROMPTS, SHORT_CFG, "case-1")
    assert again == first
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is neither read nor advanced
    assert generate_texts(lm, PROMPTS, SHORT_CFG, "case-2") != first
    assert generate_texts(lm, PROMPTS, GenerationConfig(max_new_tokens=20, seed=1), "case-1") != first


def test_batch_size_does_not_change_the_texts(lm):
    one_by_one = GenerationConfig(max_new_tokens=20, batch_size=1)
    assert generate_texts(lm, PROMPTS, one_by_one, "k") == generate_texts(lm, PROMPTS, SHORT_CFG, "k")


def test_left_padding_gives_what_the_prompt_generates_alone(lm):
    alone = generate_texts(lm, ["Paris is"], GREEDY, "a")[0]
    batched = generate_texts(lm, [LONG, "Paris is"], GREEDY, "b")
    assert batched[1] == alone
    assert batched[0] == generate_texts(lm, [LONG], GREEDY, "c")[0]


def test_each_step_feeds_one_new_token_through_the_cache(lm):
    shapes = []
    embeddings = lm.module(lm.spec.embeddings)
    handle = embeddings.register_forward_hook(lambda _m, args, _out: shapes.append(tuple(args[0].shape)))
    try:
        generate_texts(lm, [LONG, "Paris is"], GenerationConfig(max_new_tokens=5), "k")
    finally:
        handle.remove()
    width = len(lm.tokenizer(LONG)["input_ids"])
    assert shapes == [(2, width)] + [(2, 1)] * 4


class ShapeCheckingRouter:
    """An edit memory's router that changes nothing but needs the whole input, as SERAC's does."""

    def __init__(self) -> None:
        self.calls = 0

    def reroute(self, input_ids, attention_mask, logits, memory):
        assert input_ids.shape == attention_mask.shape == logits.shape[:2]
        self.calls += 1
        return logits


def test_a_hook_on_the_causal_lm_sees_every_token_and_changes_nothing_here(lm):
    expected = generate_texts(lm, [LONG, "Paris is"], GREEDY, "k")
    router = ShapeCheckingRouter()
    entry = MemoryEdit(EditRequest("{} is", "Paris", "Rome"), router)
    install_memory(lm.model, entry)
    try:
        assert generate_texts(lm, [LONG, "Paris is"], GREEDY, "k") == expected  # cache == full recompute
    finally:
        uninstall_memory(lm.model, entry)
    assert router.calls == GREEDY.max_new_tokens
    assert not hasattr(lm.model, EditMemory.ATTRIBUTE) and not lm.model._forward_hooks


def test_key_adaptor_hooks_act_on_cached_steps(lm):
    module = lm.down_proj(1)
    d_in = module.weight.shape[0 if lm.spec.weight_is_in_out else 1]  # GPT-2's Conv1D stores (in, out)
    before = generate_texts(lm, PROMPTS, GREEDY, "k")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adaptor = KeyAdaptor(d_in, rank=4, dropout=0.0)
    with torch.no_grad():
        adaptor.gate[2].bias.fill_(50.0)  # every gate open
        adaptor.proj[2].weight.mul_(20.0)  # a branch large enough to change the tiny model's tokens
    install(module, adaptor)
    try:
        cached = generate_texts(lm, PROMPTS, GREEDY, "k")
        handle = lm.model.register_forward_hook(lambda *_: None)  # forces the full recompute
        try:
            full = generate_texts(lm, PROMPTS, GREEDY, "k")
        finally:
            handle.remove()
    finally:
        uninstall(module, adaptor)
    assert cached == full and cached != before


# --- per case -------------------------------------------------------------------------------------

def test_generation_scores_of_a_case(lm):
    cfg = GenerationConfig(max_new_tokens=20, n_prompts=3)
    scores = generation_scores(lm, case(), cfg)
    assert scores["texts"] == generate_texts(lm, PROMPTS[:3], cfg, "generation\x00" + "7")
    assert scores["entropy"] == pytest.approx(mean_ngram_entropy(scores["texts"]))
    assert generation_scores(lm, case(generation=()), cfg) is None

    assert reference_prompts(case()) == ("The mother tongue of Jean Gabin is",)
    refs = reference_texts(lm, case(), cfg)
    assert len(refs) == 1 and refs[0].startswith("The mother tongue of Jean Gabin is")
    assert reference_texts(lm, case(attribute=()), cfg) is None
    assert 0.0 <= consistency_score(scores["texts"], refs) <= 1.0
