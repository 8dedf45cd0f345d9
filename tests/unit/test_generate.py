"""Generating with the edited model (``robustedit generate``, ``use/generate.py``) on tiny random
models: greedy equals transformers' greedy search, sampling is seeded, the chat template is used
or its absence refused, and saved edits / deltas are applied for the "edited" side only, the model
restored bit-exactly afterwards, also on error."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from tiny import ARCHITECTURES, same_state, state_copy

import robustedit
from robustedit.editors import Delta, applied, get_editor
from robustedit.editors.memory import MemoryEdit
from robustedit.editors.store import save_edit
from robustedit.errors import UserError
from robustedit.models.text import target_ids
from robustedit.request import EditRequest
from robustedit.use import generate as gen
from robustedit.use.generate import (
    GenerateOptions,
    before_after,
    chat_prompt,
    continuation,
    continue_ids,
    edit_and_compare,
    generate,
    prompt_ids,
)

PROMPT = "The mother tongue of Danielle Darrieux is"
# ROME on the tiny model (test_rome.py's settings); the subject ends the prompt, and on the tiny
# Qwen2 the edit takes: " English"'s first token becomes the top-1 prediction.
ROME = {"layer": 1, "stats": {"n_tokens": 2048, "seq_len": 64, "batch_size": 8},
        "context_template_length_params": [[3, 5]], "v_num_grad_steps": 10}
TEMPLATE = ("{% for m in messages %}<|endoftext|>User: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}Assistant:{% endif %}")


@pytest.fixture
def lm(tiny_lm_factory):
    return tiny_lm_factory("llama")


def lm_head_delta(lm, prompt: str, token: int, margin: float = 10.0) -> Delta:
    """A delta on the LM head's row of ``token`` that makes it the argmax after ``prompt`` by
    ``margin``: the row moves along the final hidden state h, so its logit rises by exactly the gap."""
    ids = torch.tensor([prompt_ids(lm, prompt)])
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True)
    h, logits = out.hidden_states[-1][0, -1], out.logits[0, -1]
    gap = float(logits.max() - logits[token]) + margin
    name = lm.spec.lm_head + ".weight"
    weight = dict(lm.model.named_parameters())[name]
    d = torch.zeros_like(weight)
    d[token] = gap * h / h.dot(h)
    return Delta({name: d}, {"editor": "hand"})


# --- one continuation ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_equals_transformers_greedy_search(tiny_lm_factory, arch):
    lm = tiny_lm_factory(arch)
    ids = prompt_ids(lm, PROMPT)
    ours = continue_ids(lm, ids, GenerateOptions(max_new_tokens=12, stop_at_eos=False))
    theirs = lm.model.generate(torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                               pad_token_id=0)[0, len(ids):].tolist()
    assert ours == theirs


def test_greedy_is_deterministic_and_leaves_the_model_and_rng_alone(lm):
    before, rng = state_copy(lm), torch.get_rng_state()
    first = continuation(lm, PROMPT, max_new_tokens=15)
    assert continuation(lm, PROMPT, max_new_tokens=15) == first
    assert continuation(lm, PROMPT, max_new_tokens=15, seed=123) == first  # the seed only matters when sampling
    assert same_state(lm, before) == [] and torch.equal(torch.get_rng_state(), rng)
    tokens = continue_ids(lm, prompt_ids(lm, PROMPT), GenerateOptions(max_new_tokens=15, stop_at_eos=False))
    assert first == lm.tokenizer.decode(prompt_ids(lm, PROMPT) + tokens)[len(PROMPT):]


def test_seeded_sampling_is_reproducible(lm):
    rng = torch.get_rng_state()
    a = continuation(lm, PROMPT, max_new_tokens=20, sample=True, seed=1, top_k=None)
    torch.manual_seed(999)  # the global generator does not matter
    assert continuation(lm, PROMPT, max_new_tokens=20, sample=True, seed=1, top_k=None) == a
    assert continuation(lm, PROMPT, max_new_tokens=20, sample=True, seed=2, top_k=None) != a
    torch.set_rng_state(rng)
    greedy = continuation(lm, PROMPT, max_new_tokens=20)
    assert continuation(lm, PROMPT, max_new_tokens=20, sample=True, seed=5, top_k=1) == greedy
    assert continuation(lm, PROMPT, max_new_tokens=20, sample=True, seed=5, temperature=1e-4) == greedy


def test_generation_stops_at_an_end_of_sequence_token(lm, monkeypatch):
    ids = prompt_ids(lm, PROMPT)
    tokens = continue_ids(lm, ids, GenerateOptions(max_new_tokens=10, stop_at_eos=False))
    stop = tokens[3]
    first = tokens.index(stop)
    monkeypatch.setattr(gen, "stop_ids", lambda _lm: {stop})
    assert continue_ids(lm, ids, GenerateOptions(max_new_tokens=10)) == tokens[:first]
    assert continue_ids(lm, ids, GenerateOptions(max_new_tokens=10, stop_at_eos=False)) == tokens


def test_stop_ids_come_from_tokenizer_and_generation_config(lm, monkeypatch):
    assert gen.stop_ids(lm) == {lm.tokenizer.eos_token_id}
    monkeypatch.setattr(lm.model.generation_config, "eos_token_id", [7, 9])
    assert gen.stop_ids(lm) == {lm.tokenizer.eos_token_id, 7, 9}


class ForcingRouter:
    """An edit memory that forces ``token`` wherever the input holds ``trigger``: it needs the whole
    sequence at every step (a KV-cached step would hand it the new token only), as SERAC's does."""

    def __init__(self, trigger: int, token: int) -> None:
        self.trigger, self.token, self.widths = trigger, token, []

    def reroute(self, input_ids, attention_mask, logits, memory):
        self.widths.append(input_ids.shape[1])
        hit = (input_ids == self.trigger).any(dim=1)
        logits = logits.clone()
        logits[hit, :, self.token] = logits[hit].max() + 10
        return logits


def test_an_edit_memory_sees_the_whole_sequence_at_every_step(lm):
    ids = prompt_ids(lm, PROMPT)
    router = ForcingRouter(trigger=ids[-1], token=42)
    delta = Delta({}, memory=[MemoryEdit(EditRequest("{} is", "Paris", "Rome"), router)])
    before = state_copy(lm)
    with applied(lm, delta):
        tokens = continue_ids(lm, ids, GenerateOptions(max_new_tokens=6, stop_at_eos=False))
    assert tokens == [42] * 6
    assert router.widths == [len(ids) + i for i in range(6)]
    assert same_state(lm, before) == [] and not lm.model._forward_hooks
    out = before_after(lm, PROMPT, delta=delta, max_new_tokens=6, stop_at_eos=False)
    assert out["edited"] == lm.tokenizer.decode(ids + [42] * 6)[len(PROMPT):] != out["unedited"]


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"max_new_tokens": 2.5}, {"top_k": 0},
                                 {"temperature": 0}, {"temperature": float("nan")}, {"seed": "x"}])
def test_bad_options_are_user_errors(lm, bad):
    with pytest.raises(UserError):
        continuation(lm, PROMPT, **bad)


def test_unknown_option_names_the_known_ones(lm):
    with pytest.raises(TypeError, match="max_new_token.*known: max_new_tokens"):
        continuation(lm, PROMPT, max_new_token=5)


def test_empty_prompt_and_too_many_tokens_are_user_errors(tiny_lm_factory, lm):
    with pytest.raises(UserError, match="empty prompt"):
        continuation(lm, "")
    short = tiny_lm_factory("gpt2")  # 256 learned positions
    with pytest.raises(UserError, match="exceed the 256 positions"):
        continuation(short, PROMPT, max_new_tokens=250)


# --- chat ----------------------------------------------------------------------------------------

def test_chat_without_a_template_is_a_user_error(lm):
    assert not getattr(lm.tokenizer, "chat_template", None)
    with pytest.raises(UserError, match="no chat template"):
        continuation(lm, "Hello", chat=True)


def test_chat_wraps_the_prompt_in_the_template(lm):
    tokenizer = copy.deepcopy(lm.tokenizer)
    tokenizer.chat_template = TEMPLATE
    chat_lm = dataclasses.replace(lm, tokenizer=tokenizer)
    rendered = chat_prompt(chat_lm, "Who is Danielle Darrieux?")
    assert rendered == "<|endoftext|>User: Who is Danielle Darrieux?\nAssistant:"
    ids = prompt_ids(chat_lm, "Who is Danielle Darrieux?", chat=True)
    assert ids[0] == tokenizer.eos_token_id and ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    text = continuation(chat_lm, "Who is Danielle Darrieux?", chat=True, max_new_tokens=8, stop_at_eos=False)
    tokens = continue_ids(lm, ids, GenerateOptions(max_new_tokens=8, stop_at_eos=False))
    assert text == tokenizer.decode(ids + tokens, skip_special_tokens=True)[len(rendered) - len("<|endoftext|>"):]
    assert continuation(chat_lm, "Who is Danielle Darrieux?", max_new_tokens=8) != text  # without --chat: raw


def test_a_failing_template_is_a_user_error(lm):
    tokenizer = copy.deepcopy(lm.tokenizer)
    tokenizer.chat_template = "{{ raise_exception('only system messages') }}"
    with pytest.raises(UserError, match="chat template of tiny-llama failed"):
        chat_prompt(dataclasses.replace(lm, tokenizer=tokenizer), "Hi")


# --- before and after ----------------------------------------------------------------------------

def test_before_after_with_a_delta_changes_the_argmax_and_restores(lm):
    ids = prompt_ids(lm, PROMPT)
    unedited_first = continue_ids(lm, ids, GenerateOptions(max_new_tokens=1, stop_at_eos=False))[0]
    token = 100 if unedited_first != 100 else 101
    delta = lm_head_delta(lm, PROMPT, token)
    before = state_copy(lm)
    out = before_after(lm, PROMPT, delta=delta, max_new_tokens=10)
    assert same_state(lm, before) == []
    assert out["unedited"] == continuation(lm, PROMPT, max_new_tokens=10)
    with applied(lm, delta):
        assert continue_ids(lm, ids, GenerateOptions(max_new_tokens=1))[0] == token
        expected = continuation(lm, PROMPT, max_new_tokens=10)
    assert out["edited"] == expected != out["unedited"]
    assert out["prompt"] == out["text"] == PROMPT and out["edits"] == []
    assert out["options"]["max_new_tokens"] == 10 and out["options"]["sample"] is False


def test_before_after_with_nothing_applied_has_no_edited_side(lm):
    out = before_after(lm, "The capital of {} is", subject="France", max_new_tokens=5)
    assert out["text"] == "The capital of France is" and out["edited"] is None
    assert out["unedited"] == continuation(lm, "The capital of France is", max_new_tokens=5)


def test_sampling_before_and_after_uses_the_same_random_numbers(lm):
    delta = lm_head_delta(lm, PROMPT, 100, margin=0.0)  # a tie at the first step: barely a change
    out = before_after(lm, PROMPT, delta=delta, max_new_tokens=10, sample=True, seed=3)
    assert out["unedited"] == continuation(lm, PROMPT, max_new_tokens=10, sample=True, seed=3)
    with applied(lm, delta):
        assert out["edited"] == continuation(lm, PROMPT, max_new_tokens=10, sample=True, seed=3)


def test_saved_edits_are_loaded_in_order_and_undone(lm, tmp_path):
    first = lm_head_delta(lm, PROMPT, 100)
    head = lm.spec.lm_head + ".weight"
    down = lm.down_proj_weight_name(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        second = Delta({down: 0.5 * torch.randn_like(dict(lm.model.named_parameters())[down])})
    save_edit(tmp_path / "a", lm, first, [EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English")], {})
    save_edit(tmp_path / "b", lm, second, [EditRequest("{} is", "Paris", "Rome")], {})
    before = state_copy(lm)
    out = before_after(lm, PROMPT, edits=[tmp_path / "a", str(tmp_path / "b")], max_new_tokens=10)
    assert same_state(lm, before) == []
    with applied(lm, first), applied(lm, second):
        assert out["edited"] == continuation(lm, PROMPT, max_new_tokens=10)
    assert out["edits"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert {head, down} <= set(before)


def test_a_failing_saved_edit_leaves_the_model_as_it_was(lm, tmp_path):
    save_edit(tmp_path / "a", lm, lm_head_delta(lm, PROMPT, 100), [EditRequest("{} is", "Paris", "Rome")], {})
    (tmp_path / "junk").mkdir()
    before = state_copy(lm)
    with pytest.raises(UserError, match="not a saved robustedit edit"):
        before_after(lm, PROMPT, edits=[tmp_path / "a", tmp_path / "junk"], max_new_tokens=3)
    assert same_state(lm, before) == []
    with pytest.raises(UserError, match="is not a folder"):
        before_after(lm, PROMPT, edits=[tmp_path / "missing"], max_new_tokens=3)


def test_an_error_while_generating_edited_text_restores_the_model(lm, tmp_path, monkeypatch):
    save_edit(tmp_path / "a", lm, lm_head_delta(lm, PROMPT, 100), [EditRequest("{} is", "Paris", "Rome")], {})
    before, calls = state_copy(lm), []
    real = gen.continue_ids

    def failing_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "continue_ids", failing_second)
    with pytest.raises(KeyboardInterrupt):
        before_after(lm, PROMPT, edits=[tmp_path / "a"], delta=lm_head_delta(lm, PROMPT, 101), max_new_tokens=3)
    assert len(calls) == 2 and same_state(lm, before) == []


# --- edit first ----------------------------------------------------------------------------------

def test_edit_and_compare_edits_the_filled_prompt(tiny_lm_factory):
    lm = tiny_lm_factory("qwen2")
    before = state_copy(lm)
    out = edit_and_compare(lm, "rome", "The mother tongue of {}", "Danielle Darrieux", "English",
                           overrides=ROME, max_new_tokens=8)
    assert same_state(lm, before) == []
    text = "The mother tongue of Danielle Darrieux"
    assert out["text"] == text and out["prompt"] == "The mother tongue of {}"
    assert out["editor"] == "rome" and out["target_new"] == "English" and out["delta_info"]["layer"] == 1
    first = lm.tokenizer.decode(target_ids(lm.tokenizer, text, "English")[0])
    assert out["edited"].startswith(first) and not out["unedited"].startswith(first)
    assert out["unedited"] == continuation(lm, text, max_new_tokens=8)
    # the same from an editor built beforehand, and through the one-call API
    editor = get_editor("rome", lm, **ROME)
    assert edit_and_compare(lm, editor, "The mother tongue of {}", "Danielle Darrieux", "English",
                            max_new_tokens=8)["edited"] == out["edited"]
    with pytest.raises(ValueError, match="by name only"):
        edit_and_compare(lm, editor, "The mother tongue of {}", "Danielle Darrieux", "English", sets=["layer=2"])
    assert same_state(lm, before) == []


def test_edit_and_compare_refusals(lm):
    with pytest.raises(UserError, match="exactly one"):
        edit_and_compare(lm, "rome", "The mother tongue of Danielle Darrieux", "Danielle Darrieux", "English")
    with pytest.raises(UserError, match="REP"):
        edit_and_compare(lm, "rome", "The mother tongue of {}", "Danielle Darrieux", "English",
                         rephrase=["D. Darrieux"], overrides=ROME)


# --- one call ------------------------------------------------------------------------------------

def test_generate_is_the_package_api_and_checks_its_arguments(lm, tmp_path):
    assert robustedit.generate is generate and "generate" in robustedit.__all__
    save_edit(tmp_path / "a", lm, lm_head_delta(lm, PROMPT, 100), [EditRequest("{} is", "Paris", "Rome")], {})
    out = generate(PROMPT, lm=lm, edits=[tmp_path / "a"], max_new_tokens=6)
    assert out == before_after(lm, PROMPT, edits=[tmp_path / "a"], max_new_tokens=6)
    with pytest.raises(UserError, match="give the subject and the new target"):
        generate("The mother tongue of {} is", lm=lm, editor="rome", subject="Danielle Darrieux")
    with pytest.raises(UserError, match="name an editor"):
        generate(PROMPT, lm=lm, target="English")
    with pytest.raises(UserError, match="name an editor"):
        generate(PROMPT, lm=lm, sets=["layer=1"])
    with pytest.raises(UserError, match="must hold"):
        generate(PROMPT, lm=lm, editor="rome", subject="Danielle Darrieux", target="English")
    with pytest.raises(UserError, match="unknown editor|did you mean"):
        generate("The mother tongue of {} is", lm=lm, editor="romee", subject="Danielle Darrieux", target="English")
    with pytest.raises(UserError, match="max_new_tokens"):
        generate(PROMPT, model="no-such-model", max_new_tokens=0)  # before any model is loaded
