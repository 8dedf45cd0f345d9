"""Generation quality inside the evaluation loop: texts kept in the record, metrics in the summary."""

import pytest

from robustedit.data import Case
from robustedit.editors import get_editor
from robustedit.eval.generation import GenerationConfig
from robustedit.eval.runner import EvalOptions, evaluate_case
from robustedit.request import EditRequest

SETTINGS = {"layer": 1, "stats": {"n_tokens": 2048, "seq_len": 64, "batch_size": 8},
            "context_template_length_params": [[3, 5]], "v_num_grad_steps": 3}
CASE = Case("7", EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
            attribute_prompts=("The mother tongue of Tony Blair is", "Michael Jordan speaks"),
            generation_prompts=("Danielle Darrieux's mother tongue is", "Danielle Darrieux was born in", "Paris is"))


def test_generation_texts_and_metrics_land_in_the_record(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    editor = get_editor("rome", lm, **SETTINGS)
    options = EvalOptions(generation=GenerationConfig(max_new_tokens=12, n_prompts=2))
    record = evaluate_case(editor, CASE, options)
    texts = record["generation"]["texts"]
    assert len(texts) == 2 and texts[0].startswith("Danielle Darrieux's mother tongue is")  # n_prompts of them
    references = record["generation"]["reference_texts"]  # the unedited model on the attribute prompts
    assert references[0].startswith("The mother tongue of Tony Blair is") and references[1].startswith("Michael Jordan speaks")
    m = record["metrics"]
    assert m["generation_entropy"] > 0 and 0.0 <= m["reference_consistency"] <= 1.0
    assert record["timing"]["generation_s"] > 0
    again = evaluate_case(editor, CASE, options)
    assert again["generation"] == record["generation"]  # seeded per case: the same texts every time


def test_without_generation_nothing_is_generated(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    record = evaluate_case(get_editor("rome", lm, **SETTINGS), CASE, EvalOptions())
    assert "generation" not in record and "generation_entropy" not in record["metrics"]


def test_bad_generation_settings_are_user_errors():
    from robustedit.errors import UserError

    with pytest.raises(UserError):
        GenerationConfig(max_new_tokens=0)
