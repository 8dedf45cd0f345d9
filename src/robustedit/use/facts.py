"""Editing every fact of a file (``robustedit edit --file FACTS [--save DIR]``).

A facts file is JSON (a list of records, or one record) or JSON Lines (one record a line). A record
holds ``prompt`` (with ``{}`` where the subject goes), ``subject`` and ``target_new``, optionally
``target_true``; other fields are ignored, so rows of the robustness schema (``rep_valid.json``)
are facts files too::

    {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English"}
    {"prompt": "{} plays the sport of", "subject": "Michael Jordan", "target_new": "tennis", "target_true": "basketball"}

:func:`read_facts` turns the file into requests, refusing a bad one with one line that names the
line and the field. :func:`edit_facts` edits them: an editor built to edit many facts at once
(:func:`edits_in_one_call`: MEMIT and its add-ons) in one call, any other one fact after another,
each applied before the next is computed, as ``evaluate --sequential`` does. Either way the result
is one :class:`EditSequence`: ``save`` writes it as one edit folder, ``undo`` puts the model back
bit-exactly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from robustedit.editors.base import Editor
from robustedit.editors.store import EditSequence
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel
from robustedit.models.forward import Prediction, top_next_tokens
from robustedit.models.text import first_target_token
from robustedit.progress import progress
from robustedit.request import EditRequest

REQUIRED = ("prompt", "subject", "target_new")
OPTIONAL = ("target_true",)


# --- reading -------------------------------------------------------------------------------------

def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _json_error(path: Path, e: json.JSONDecodeError, line: int | None = None) -> UserError:
    return UserError(f"{path}, line {line if line is not None else e.lineno}: not valid JSON "
                     f"({e.msg} at column {e.colno})")


def _json_array(path: Path, text: str) -> list[tuple[int, Any]]:
    """The elements of the JSON array ``text`` with the line each starts on."""
    decoder, out = json.JSONDecoder(), []
    pos = text.index("[") + 1

    def skip(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return []
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise _json_error(path, e) from None
        out.append((_line_of(text, pos), value))
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            break
        raise UserError(f"{path}, line {_line_of(text, pos)}: not valid JSON (expected ',' or ']' after a record)")
    if skip(pos + 1) != len(text):
        raise UserError(f"{path}, line {_line_of(text, skip(pos + 1))}: not valid JSON (text after the closing ']')")
    return out


def _records(path: Path, text: str) -> list[tuple[int, Any]]:
    """``(line, record)`` for every record of a JSON list, a single JSON object or JSON Lines."""
    start = text.lstrip()
    if start.startswith("["):
        return _json_array(path, text)
    if start.startswith("{") and path.suffix.lower() != ".jsonl":
        try:  # one (perhaps pretty-printed) object: a file of one fact
            return [(_line_of(text, text.index("{")), json.loads(text))]
        except json.JSONDecodeError:
            pass  # JSON Lines, read line by line below
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise _json_error(path, e, number) from None
    return out


def _request(path: Path, line: int, index: int, record: Any) -> EditRequest:
    where = f"{path}, line {line} (fact {index})"
    if not isinstance(record, dict):
        raise UserError(f"{where}: a fact is a JSON object with {', '.join(REQUIRED)}, not {type(record).__name__}")
    missing = [k for k in REQUIRED if k not in record or record[k] is None]
    if missing:
        raise UserError(f"{where}: missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                        f"(a fact needs {', '.join(REQUIRED)}; target_true is optional)")
    for key in (*REQUIRED, *OPTIONAL):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise UserError(f"{where}: field {key!r} must be a string, not {type(record[key]).__name__}")
    if "{}" not in record["prompt"]:
        raise UserError(f"{where}: the prompt must hold {{}} where the subject goes: {record['prompt']!r}")
    try:
        return EditRequest(record["prompt"], record["subject"], record["target_new"], record.get("target_true"))
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def read_facts(path: Path | str) -> list[EditRequest]:
    """The facts of a JSON or JSONL file (module docstring) as requests, in the file's order.

    A bad file is one :class:`UserError` naming the file, the line and what is wrong: invalid JSON,
    a record that is not an object, a missing or non-string field, a prompt without ``{}``, no facts."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"facts file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from a spreadsheet export is not JSON
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise UserError(f"facts file {path} is empty")
    records = _records(path, text)
    if not records:
        raise UserError(f"facts file {path} holds no facts")
    return [_request(path, line, i, record) for i, (line, record) in enumerate(records, 1)]


# --- editing -------------------------------------------------------------------------------------

def edits_in_one_call(editor: Editor | type[Editor]) -> bool:
    """Whether ``editor`` edits many facts in one call (``Editor.batch_edits``: MEMIT and memit+rep)
    rather than one after another."""
    cls = editor if isinstance(editor, type) else type(editor)
    return cls.batch_edits


def top_prediction(lm: LanguageModel, text: str) -> Prediction:
    """The most likely next token after ``text`` and its probability."""
    return top_next_tokens(lm, text, 1)[0]


@dataclass(frozen=True)
class FactOutcome:
    """One fact: the top prediction after its prompt before any edit and after all of them."""

    request: EditRequest
    target_token: str  # the first token of the new target, decoded like the predictions
    before: Prediction
    after: Prediction

    @property
    def took(self) -> bool:
        """The new target's first token is the top prediction once every fact is in."""
        return self.after.token == self.target_token

    def row(self) -> dict[str, Any]:
        """A flat record for a table or a JSON line."""
        r = self.request
        return {"prompt": r.text, "subject": r.subject, "target_new": r.target_new, "target_true": r.target_true,
                "before": self.before.token, "before_prob": self.before.prob,
                "after": self.after.token, "after_prob": self.after.prob, "took": self.took}


@dataclass
class FactsEdit:
    """The facts of a file edited into ``sequence.lm``, which stays edited until :meth:`undo`."""

    sequence: EditSequence
    outcomes: list[FactOutcome]
    editor: str
    config: dict[str, Any]  # the editor's resolved settings (what a saved edit records)
    batched: bool  # True: one call for every fact; False: one call per fact, each applied before the next
    seconds: float  # editing time (the predictions before and after excluded)
    infos: list[dict[str, Any]] = field(default_factory=list)  # each call's Delta.info

    @property
    def n_took(self) -> int:
        return sum(o.took for o in self.outcomes)

    def rows(self) -> list[dict[str, Any]]:
        return [o.row() for o in self.outcomes]

    def save(self, out_dir: Path | str) -> Path:
        """Write every fact as one edit folder (``load_edit`` re-applies it, ``undo_saved`` undoes it)."""
        return self.sequence.save(Path(out_dir), self.editor, self.config)

    def undo(self) -> None:
        """Put the model back bit-exactly as it was before :func:`edit_facts`."""
        self.sequence.undo()


def edit_facts(editor: Editor, requests: list[EditRequest], *, batch: bool | None = None) -> FactsEdit:
    """Edit every request into ``editor.lm`` and leave them applied; :meth:`FactsEdit.undo` takes
    them all out bit-exactly, :meth:`FactsEdit.save` writes them as one edit.

    ``batch`` (default: :func:`edits_in_one_call`): True edits all requests in one call, one step of
    the sequence; False edits one request per call, each applied (and committed to the editor, so
    that AlphaEdit preserves the earlier facts) before the next is computed, one step per fact.
    If an edit fails, the facts applied so far are undone before the error propagates; a
    :class:`UserError` then names the fact."""
    if not requests:
        raise UserError("no facts to edit")
    lm = editor.lm
    batched = edits_in_one_call(editor) if batch is None else bool(batch)
    before = [top_prediction(lm, r.text) for r in progress(requests, desc="predicting before the edits")]
    firsts = [first_target_token(lm.tokenizer, r.text, r.target_new) for r in requests]
    sequence, infos = EditSequence(lm), []
    groups = [list(requests)] if batched else [[r] for r in requests]
    t0 = time.perf_counter()
    try:
        for i, group in enumerate(progress(groups, desc=f"editing with {editor.name}", disable=len(groups) == 1)):
            try:
                delta = editor.edit(group)
            except UserError as e:
                if batched:
                    raise
                raise UserError(f"fact {i + 1} ({group[0].subject!r}): {e}") from None
            sequence.apply(delta, group)
            editor.commit(delta)
            infos.append(dict(delta.info))
        seconds = time.perf_counter() - t0
        after = [top_prediction(lm, r.text) for r in progress(requests, desc="predicting after the edits")]
    except BaseException:
        sequence.undo()
        raise
    outcomes = [FactOutcome(r, t, b, a) for r, t, b, a in zip(requests, firsts, before, after)]
    return FactsEdit(sequence, outcomes, editor.name, editor.settings(), batched, seconds, infos)
