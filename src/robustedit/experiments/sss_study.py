"""``robustedit reproduce sss-locality`` and ``reproduce sss-portability``: the SSS paper's §7
comprehensive study (Tables 3 and 5) on the embedded model, for every editor available.

**sss-locality** (Table 3): Reliability and the four locality levels of §7.1. CounterFact
(``counterfact``) gives Reliability, Pre-Neighbor (its neighbours: the old answer), Post-Neighbor
(its attribute prompts: the new answer) and Distract-Neighbor (the edit stated before each
neighbour); Unrelated Attributes need other facts of the same subject, which only CounterFact-Hard
(``counterfact-hard``, ``same_subj``) has, so that row comes from it (with its own Reliability
row beside it). Locality levels are EasyEdit's agreement of the teacher-forced tokens before and
after the edit (``eval.groups``).

**sss-portability** (Table 5): three blocks of Reliability, Generality and the portability metric:
Subject Replace on the ``zsre-knowedit`` cases that have alias prompts (the paper's zsRE-based
set), Reversed Relation on ``reverse-relation`` (ConflictEdit's pairs: edit "The father of A is" →
B', ask "The child of B' is" → A; its generality prompt is the relation's question form), and
One-Hop on the ``wiki-counterfact`` cases that have Reasoning prompts (the paper's One-Hop set is
CounterFact-based; this file has no paraphrases, so its Generality is empty). Token accuracy, as
KnowEdit scores portability.

Editors: ROME, MEMIT, FT-L and FT-L + SSS always; MEND, SERAC and their SSS variants when trained
(``robustedit train NAME``), otherwise listed as skipped. Each edit is made alone on the unedited
model, on the first ``CASES`` usable cases of each file (``--limit``). Each (editor, dataset) is a
run folder ``OUT/<editor>/<dataset>/`` (``robustedit compare`` reads them); finished ones are
reused when rerun with the same --out. Writes ``OUT/sss_<name>.{json,md,png}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from robustedit.data import load_cases
from robustedit.errors import UserError
from robustedit.experiments import Experiment, Options, evaluate_variant, register
from robustedit.output import atomic_write, write_json

log = logging.getLogger(__name__)
EDITORS = ("rome", "memit", "ft-l", "ft-l+sss", "mend", "mend+sss", "serac", "serac+sss")
CASES = 30


@dataclass(frozen=True)
class Row:
    label: str
    dataset: str
    metric: str


@dataclass(frozen=True)
class Study:
    name: str
    datasets: dict[str, str | None]  # dataset -> labelled group its cases must have (None: every case)
    rows: tuple[Row, ...]
    caption: str


LOCALITY = Study("locality", {"counterfact": None, "counterfact-hard": "unrelated_attributes"}, (
    Row("Reliability", "counterfact", "efficacy_acc"),
    Row("Pre-Neighbor", "counterfact", "pre_neighbor"),
    Row("Post-Neighbor", "counterfact", "post_neighbor"),
    Row("Distract-Neighbor", "counterfact", "distract_neighbor"),
    Row("Reliability (CF-Hard)", "counterfact-hard", "efficacy_acc"),
    Row("Unrelated Attributes (CF-Hard)", "counterfact-hard", "unrelated_attributes"),
), "SSS paper Table 3 analogue: token accuracy / agreement with the unedited model, in %")
PORTABILITY = Study("portability", {"zsre-knowedit": "portability_alias", "reverse-relation": "portability_reverse",
                                    "wiki-counterfact": "portability_one_hop"}, (
    Row("Replace: Reliability", "zsre-knowedit", "efficacy_acc"),
    Row("Replace: Generality", "zsre-knowedit", "paraphrase_acc"),
    Row("Replace: Subject Replace", "zsre-knowedit", "portability_alias"),
    Row("Reversed: Reliability", "reverse-relation", "efficacy_acc"),
    Row("Reversed: Generality", "reverse-relation", "paraphrase_acc"),
    Row("Reversed: Reversed Relation", "reverse-relation", "portability_reverse"),
    Row("One-Hop: Reliability", "wiki-counterfact", "efficacy_acc"),
    Row("One-Hop: Generality", "wiki-counterfact", "paraphrase_acc"),
    Row("One-Hop: One-Hop", "wiki-counterfact", "portability_one_hop"),
), "SSS paper Table 5 analogue: token accuracy in %")


def study_cases(study: Study, limit: int) -> dict[str, list]:
    """The first ``limit`` cases of each dataset that have the study's prompts."""
    data = {}
    for dataset, group in study.datasets.items():
        cases = [c for c in load_cases(dataset) if group is None or c.group(group)]
        data[dataset] = cases[:limit]
    return data


def available_editors(lm, names: list[str], sets: list[str]) -> tuple[list[str], dict[str, str]]:
    """Editors that can run (trained ones need their checkpoint) and why the others cannot."""
    from robustedit.editors.settings import get_editor

    ok, skipped = [], {}
    for name in names:
        try:
            get_editor(name, lm, sets=sets)
            ok.append(name)
        except UserError as e:
            skipped[name] = str(e)
    return ok, skipped


def study_markdown(study: Study, result: dict) -> str:
    editors = list(result["runs"])
    sizes = ", ".join(f"{d}: {n}" for d, n in result["cases"].items())
    lines = [f"# SSS {study.name} study on {result['model']}", "",
             f"{study.caption}; each edit alone on the unedited model; cases: {sizes}.",
             f"Command: `{result['command']}`", "",
             "| metric | " + " | ".join(editors) + " |", "|---|" + "---|" * len(editors)]
    for row in study.rows:
        cells = []
        for e in editors:
            v = result["runs"][e].get(row.dataset, {}).get("metrics", {}).get(row.metric)
            cells.append("–" if v is None else f"{100 * v:.1f}")
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    times = [f"{result['runs'][e].get(next(iter(result['cases'])), {}).get('timing', {}).get('edit_s_median', float('nan')):.2f}"
             for e in editors]
    lines.append("| edit s (median) | " + " | ".join(times) + " |")
    if result["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{e} ({why})" for e, why in result["skipped"].items())]
    return "\n".join(lines) + "\n"


def plot_study(study: Study, result: dict, path: Path) -> Path:
    from robustedit.output import figure, save_figure

    editors = list(result["runs"])
    fig, ax = figure(max(7.0, 1.1 * len(study.rows) + 2), 4.2)
    width = 0.8 / max(1, len(editors))
    for i, e in enumerate(editors):
        ys = [100 * result["runs"][e].get(r.dataset, {}).get("metrics", {}).get(r.metric, float("nan")) for r in study.rows]
        ax.bar([x + i * width for x in range(len(study.rows))], ys, width, label=e)
    ax.set_xticks([x + width * (len(editors) - 1) / 2 for x in range(len(study.rows))],
                  [r.label.replace(": ", "\n").replace(" (", "\n(") for r in study.rows], fontsize=7)
    ax.set_ylabel("%")
    ax.set_title(f"SSS {study.name} study ({result['model']})", fontsize=9)
    ax.legend(fontsize=7, ncol=4)
    return save_figure(fig, path)


class _StudyExperiment(Experiment):
    study: Study
    variants = EDITORS

    def run(self, options: Options, out: Path, variants: list[str]) -> dict:
        study = self.study
        data = study_cases(study, options.limit or CASES)
        lm = options.load_model()
        editors, skipped = available_editors(lm, variants, list(options.sets))
        for name, why in skipped.items():
            log.warning("skipping %s: %s", name, why)
        runs = {e: {d: evaluate_variant(lm, e, list(options.sets), d, cases, out / e / d, options)
                    for d, cases in data.items()} for e in editors}
        result = {"model": lm.name, "command": options.command, "cases": {d: len(c) for d, c in data.items()},
                  "skipped": skipped,
                  "runs": {e: {d: {"n_cases": s["n_cases"], "metrics": s["metrics"], "timing": s["timing"]}
                               for d, s in per.items()} for e, per in runs.items()}}
        write_json(out / f"sss_{study.name}.json", result)
        atomic_write(out / f"sss_{study.name}.md", study_markdown(study, result))
        plot_study(study, result, out / f"sss_{study.name}.png")
        log.info("wrote %s/sss_%s.{json,md,png}", out, study.name)
        return result


@register
class LocalityStudy(_StudyExperiment):
    name = "sss-locality"
    help = "the SSS paper's Table 3: reliability and four locality levels for every editor"
    study = LOCALITY


@register
class PortabilityStudy(_StudyExperiment):
    name = "sss-portability"
    help = "the SSS paper's Table 5: subject replace, reversed relation, one-hop for every editor"
    study = PORTABILITY
