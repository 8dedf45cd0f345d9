"""`load_cases(dataset)`: a bundled dataset name or the path of a JSON / JSONL file → Cases.

Bundled files live in the package (``robustedit/resources/data``) and are found through
importlib.resources, so that an installed wheel works offline and never reads a checkout. Every
mistake a user can make here (wrong name, missing file, broken JSON) is a one-line `UserError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from robustedit.data.schemas import Case, json_type_name, parse_records
from robustedit.errors import UserError
from robustedit.registry import Registry


@dataclass(frozen=True)
class BundledDataset:
    """A data file shipped with the package; ``name`` is its canonical (non-alias) name."""

    name: str
    filename: str
    description: str


BUNDLED: Registry[BundledDataset] = Registry("dataset")


def _bundle(name: str, filename: str, description: str, aliases: tuple[str, ...] = ()) -> None:
    entry = BundledDataset(name, filename, description)
    for key in (name, *aliases):
        BUNDLED.register(key, entry)


_bundle("counterfact", "counterfact.json", "CounterFact, 925 cases, original schema")
_bundle("rep-valid", "rep_valid.json", "100 CounterFact cases with subject rephrasings (REP paper)",
        aliases=("rep_valid",))
# The REP table's test file: the other half of the authors' test cases is kept for evaluation elsewhere.
_bundle("rep-test", "rep_test.json", "224 CounterFact test cases with subject rephrasings (REP paper)",
        aliases=("rep_test",))
_bundle("counterfact-val", "counterfact_val.json",
        "1,801 CounterFact cases, EasyEdit's flat schema (1 paraphrase, 1 neighbour each)", aliases=("counterfact_val",))
# The contract's example name `zsre` means this file: it is the only zsRE data bundled.
_bundle("zsre-rephrase", "zsre_subject_rephrases.json",
        "340 zsRE cases with subject rephrasings (REP paper)", aliases=("zsre_rephrase", "zsre"))
# zsRE's test edits as EasyEdit and the SSS paper score them: a rephrase and two locality prompts each.
_bundle("zsre-knowedit", "zsre_portability.json",
        "643 zsRE test edits, KnowEdit schema (rephrase, locality, portability)", aliases=("zsre_portability",))
# Training data of MEND / SERAC, and the held-out pool on which training-based editors' settings are chosen.
_bundle("zsre-train", "zsre_mend_train_1k.json", "1,000 zsRE training edits, MEND schema", aliases=("zsre_train",))
# Portability and fine-grained locality (Case.labeled); see the README next to the files for what each holds.
_bundle("counterfact-hard", "counterfact_hard.json",
        "454 CounterFact edits as questions, same-subject questions without answers (EREN)",
        aliases=("counterfact_hard",))
_bundle("wiki-counterfact", "wiki_counterfact.json",
        "1,428 KnowEdit WikiData-counterfact edits (alias, one-hop, logical portability; locality)",
        aliases=("wiki_counterfact",))
_bundle("wiki-recent", "wiki_recent.json", "570 KnowEdit WikiData-recent edits (new facts: no old answer)",
        aliases=("wiki_recent",))
_bundle("reverse-relation", "reverse_relation.json",
        "1,286 edits whose reverse relation is the portability test (ConflictEdit)", aliases=("reverse_relation",))


def dataset_names() -> list[str]:
    """Canonical names of the bundled datasets (aliases left out)."""
    return [n for n in BUNDLED if BUNDLED.get(n).name == n]


def load_cases(dataset: str, limit: int | None = None) -> list[Case]:
    """The first ``limit`` usable cases (all if None) of a bundled dataset or a JSON/JSONL file."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"the limit must be a positive whole number, not {limit!r}")
    if dataset in BUNDLED:
        entry = BUNDLED.get(dataset)
        # One name per "/": joinpath of a namespace package (MultiplexedPath) takes one in 3.11.
        resource = resources.files("robustedit") / "resources" / "data" / entry.filename
        text = resource.read_text(encoding="utf-8")
        return parse_records(_parse_json(text, entry.name, jsonl=False), entry.name, limit)
    path = Path(dataset).expanduser()
    if not _looks_like_path(dataset) and not path.exists():
        raise UserError(BUNDLED.unknown_message(dataset) + " Or give the path of a JSON file.")
    return parse_records(_read_records(path), str(path), limit)


def _looks_like_path(dataset: str) -> bool:
    return "/" in dataset or "\\" in dataset or dataset.lower().endswith((".json", ".jsonl"))


def _read_records(path: Path) -> list[Any]:
    if not path.exists():
        raise UserError(f"no such dataset file: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a JSON or JSONL file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    return _parse_json(text, str(path), jsonl=path.suffix.lower() == ".jsonl")


def _parse_json(text: str, where: str, jsonl: bool) -> list[Any]:
    """A JSON array, or one JSON value per non-blank line for JSONL."""
    if not text.strip():
        raise UserError(f"{where}: the file is empty")
    if jsonl:
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: invalid JSON on line {n}, column {e.colno}: {e.msg}") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (for one object per line, name the file .jsonl)" if e.msg == "Extra data" else ""
        raise UserError(f"{where}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}{hint}") from None
    if not isinstance(data, list):
        raise UserError(f"{where}: expected a list of JSON objects, but the file holds {json_type_name(data)}")
    return data
