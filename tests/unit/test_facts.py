"""Editing the facts of a file (``robustedit edit --file``, ``use/facts.py``): reading JSON / JSONL
with one-line errors that name the line and the field, MEMIT editing them in one call and other
editors one after another, one saveable sequence, and an undo that is bit-exact."""

from __future__ import annotations

import json

import pytest
from tiny import same_state, state_copy

import robustedit
from robustedit.editors import EDITORS, get_editor, load_edit
from robustedit.errors import UserError
from robustedit.models.text import target_ids
from robustedit.request import EditRequest
from robustedit.use.facts import (
    edit_facts,
    edits_in_one_call,
    read_facts,
    top_prediction,
)

FACTS = [
    {"prompt": "The mother tongue of {}", "subject": "Danielle Darrieux", "target_new": "English", "target_true": "French"},
    {"prompt": "The sport played by {}", "subject": "Michael Jordan", "target_new": "tennis"},
]
REQUESTS = [EditRequest(**f) for f in FACTS]
STATS = {"stats": {"n_tokens": 2048, "seq_len": 64, "batch_size": 8}, "context_template_length_params": [[3, 5]],
         "v_num_grad_steps": 10}
ROME = {"layer": 1, **STATS}
MEMIT = {"layers": [0, 1], "mom2_update_weight": 10.0, **STATS}


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- reading -------------------------------------------------------------------------------------

def test_jsonl_json_list_and_single_object_read_alike(tmp_path):
    lines = "\n".join(json.dumps({**f, "case_id": i}) for i, f in enumerate(FACTS)) + "\n\n"
    assert read_facts(write(tmp_path, "f.jsonl", lines)) == REQUESTS  # extra fields and blank lines ignored
    assert read_facts(write(tmp_path, "f.json", json.dumps(FACTS, indent=2))) == REQUESTS
    assert read_facts(str(write(tmp_path, "g.json", "\ufeff" + json.dumps(FACTS)))) == REQUESTS  # BOM
    assert read_facts(write(tmp_path, "one.json", json.dumps(FACTS[0], indent=2))) == REQUESTS[:1]
    assert read_facts(write(tmp_path, "one.jsonl", json.dumps(FACTS[1]))) == REQUESTS[1:]
    assert read_facts(write(tmp_path, "null.jsonl", json.dumps({**FACTS[1], "target_true": None}))) == REQUESTS[1:]


@pytest.mark.parametrize("name, text, message", [
    ("empty.jsonl", "", r"empty.jsonl is empty"),
    ("blank.json", "  \n\n", r"blank.json is empty"),
    ("none.json", "[ ]", r"none.json holds no facts"),
    ("bad.jsonl", json.dumps(FACTS[0]) + "\n\n" + '{"prompt": "x {}",\n', r"bad.jsonl, line 3: not valid JSON"),
    ("bad.json", '[\n  {"prompt": "{} is", "subject": "a", "target_new": "b"},\n  {"prompt": oops}\n]',
     r"bad.json, line 3: not valid JSON \(Expecting value at column 14\)"),
    ("comma.json", '[{"prompt": "{} is", "subject": "a", "target_new": "b"}\n {"prompt": "{}"}]',
     r"comma.json, line 2: not valid JSON \(expected ',' or ']'"),
    ("tail.json", '[{"prompt": "{} is", "subject": "a", "target_new": "b"}]\nmore', r"tail.json, line 2: .*after the closing"),
    ("missing.jsonl", json.dumps(FACTS[0]) + "\n" + json.dumps({"prompt": "{} is", "subject": "Paris"}),
     r"missing.jsonl, line 2 \(fact 2\): missing field 'target_new' \(a fact needs prompt, subject, target_new"),
    ("two.json", json.dumps([{"prompt": "{} is"}]), r"line 1 \(fact 1\): missing fields 'subject', 'target_new'"),
    ("type.jsonl", json.dumps({**FACTS[0], "target_new": 3}), r"line 1 \(fact 1\): field 'target_new' must be a string, not int"),
    ("braces.jsonl", json.dumps(FACTS[0]) + "\n" + json.dumps({**FACTS[1], "prompt": "Michael Jordan plays"}),
     r"line 2 \(fact 2\): the prompt must hold \{\} where the subject goes: 'Michael Jordan plays'"),
    ("twice.jsonl", json.dumps({**FACTS[0], "prompt": "{} and {}"}), r"line 1 \(fact 1\): the prompt must contain exactly one"),
    ("blank_target.jsonl", json.dumps({**FACTS[0], "target_new": " "}), r"line 1 \(fact 1\): the new target is empty"),
    ("list.json", json.dumps([FACTS[0], "The sky is blue"]), r"list.json, line 1 \(fact 2\): a fact is a JSON object"),
    ("scalar.jsonl", "3\n", r"scalar.jsonl, line 1 \(fact 1\): a fact is a JSON object .*not int"),
])
def test_bad_facts_files_are_one_line_user_errors(tmp_path, name, text, message):
    with pytest.raises(UserError, match=message) as info:
        read_facts(write(tmp_path, name, text))
    assert "\n" not in str(info.value)


def test_missing_file_and_folder_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_facts(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="is not a file"):
        read_facts(tmp_path)
    (tmp_path / "latin1.json").write_bytes(b'[{"prompt": "{} \xe9"}]')
    with pytest.raises(UserError, match="not UTF-8"):
        read_facts(tmp_path / "latin1.json")


# --- batch or one after another ------------------------------------------------------------------

def test_memit_and_its_add_ons_edit_in_one_call_the_others_one_by_one():
    batch = {name for name in EDITORS.names() if edits_in_one_call(EDITORS.get(name))}
    assert batch == {"memit", "memit+rep"}


def test_a_declared_batch_attribute_wins():
    class Declared(EDITORS.get("rome")):
        batch_edits = True

    class Refused(EDITORS.get("memit")):
        batch_edits = False

    assert edits_in_one_call(Declared) and not edits_in_one_call(Refused)


class Spy:
    """Records every ``edit`` and ``commit`` call of an editor, passing them through."""

    def __init__(self, editor, monkeypatch, fail_at: int | None = None) -> None:
        self.edits, self.commits = [], []
        edit, commit = editor.edit, editor.commit

        def spy_edit(requests):
            self.edits.append(list(requests))
            if fail_at is not None and len(self.edits) == fail_at:
                raise UserError("the value optimisation diverged")
            return edit(requests)

        def spy_commit(delta):
            self.commits.append(delta)
            return commit(delta)

        monkeypatch.setattr(editor, "edit", spy_edit)
        monkeypatch.setattr(editor, "commit", spy_commit)


def check_outcomes(lm, result, requests):
    """The table's before/after columns are the model's top-1 without and with every fact."""
    assert [o.request for o in result.outcomes] == requests
    for o in result.outcomes:
        assert o.after == top_prediction(lm, o.request.text)  # the model is still edited
        assert o.target_token == lm.tokenizer.decode(target_ids(lm.tokenizer, o.request.text, o.request.target_new)[0])
        assert o.took == (o.after.token == o.target_token)
    rows = result.rows()
    assert [r["target_new"] for r in rows] == [r.target_new for r in requests]
    assert set(rows[0]) == {"prompt", "subject", "target_new", "target_true", "before", "before_prob", "after",
                            "after_prob", "took"}
    assert result.n_took == sum(r["took"] for r in rows)


def test_rome_edits_one_fact_after_another_and_undoes_exactly(tiny_lm_factory, monkeypatch, tmp_path):
    lm = tiny_lm_factory("qwen2")
    editor = get_editor("rome", lm, **ROME)
    spy = Spy(editor, monkeypatch)
    before = state_copy(lm)
    unedited = [top_prediction(lm, r.text) for r in REQUESTS]
    result = edit_facts(editor, REQUESTS)
    try:
        assert not result.batched and spy.edits == [[r] for r in REQUESTS] and len(spy.commits) == 2
        assert [s["requests"][0]["subject"] for s in result.sequence.steps] == ["Danielle Darrieux", "Michael Jordan"]
        assert [o.before for o in result.outcomes] == unedited
        check_outcomes(lm, result, REQUESTS)
        assert result.n_took == 2  # ROME takes on the tiny Qwen2
        assert result.editor == "rome" and result.config["layer"] == 1 and len(result.infos) == 2
        edited = state_copy(lm)
        result.save(tmp_path / "facts")
    finally:
        result.undo()
    assert same_state(lm, before) == []
    manifest = json.loads((tmp_path / "facts" / "manifest.json").read_text())
    assert manifest["editor"] == "rome" and manifest["n_steps"] == 2
    backup = load_edit(tmp_path / "facts", lm)  # the saved folder is the model edited fact by fact
    try:
        assert same_state(lm, edited) == []
    finally:
        backup.restore()
    assert same_state(lm, before) == []


def test_memit_edits_every_fact_in_one_call(tiny_lm_factory, monkeypatch):
    lm = tiny_lm_factory("qwen2")
    editor = get_editor("memit", lm, **MEMIT)
    spy = Spy(editor, monkeypatch)
    before = state_copy(lm)
    result = edit_facts(editor, REQUESTS)
    try:
        assert result.batched and spy.edits == [REQUESTS] and len(spy.commits) == 1
        assert len(result.sequence.steps) == 1 and len(result.sequence.steps[0]["requests"]) == 2
        check_outcomes(lm, result, REQUESTS)
        assert same_state(lm, before) != []
    finally:
        result.undo()
    assert same_state(lm, before) == []
    forced = edit_facts(editor, REQUESTS, batch=False)  # one by one on request
    forced.undo()
    assert not forced.batched and spy.edits[1:] == [[r] for r in REQUESTS]
    assert same_state(lm, before) == []


def test_a_failing_fact_undoes_the_earlier_ones_and_is_named(tiny_lm_factory, monkeypatch):
    lm = tiny_lm_factory("qwen2")
    editor = get_editor("rome", lm, **ROME)
    spy = Spy(editor, monkeypatch, fail_at=2)
    before = state_copy(lm)
    with pytest.raises(UserError, match=r"fact 2 \('Michael Jordan'\): the value optimisation diverged"):
        edit_facts(editor, REQUESTS)
    assert len(spy.edits) == 2 and len(spy.commits) == 1  # the first fact was applied, then undone
    assert same_state(lm, before) == []
    with pytest.raises(UserError, match="no facts"):
        edit_facts(editor, [])


def test_facts_functions_are_package_api(tmp_path):
    assert robustedit.read_facts is read_facts and robustedit.edit_facts is edit_facts
    assert {"read_facts", "edit_facts"} <= set(robustedit.__all__)
