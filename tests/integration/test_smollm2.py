"""The embedded model loads offline, predicts sensibly, and ROME really edits it."""

import json

import torch

from robustedit.data import load_cases
from robustedit.editors import applied
from robustedit.eval.runner import RunInfo, read_records, run_evaluation
from robustedit.eval.scoring import score_pairs
from robustedit.request import EditRequest
from robustedit.editors.settings import get_editor


def greedy(lm, text, n=3):
    ids = lm.tokenizer(text, return_tensors="pt")
    out = lm.model.generate(**ids, max_new_tokens=n, do_sample=False)
    return lm.tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def top1(lm, prompts):
    return [s.next_token for s in score_pairs(lm, [(p, "x") for p in prompts])]


def test_tokenizer_and_weights_converted_right(smollm2):
    # transformers 5.5 turned every space into <|endoftext|>; this catches such a regression.
    assert greedy(smollm2, "The capital of France is").startswith(" Paris")
    assert smollm2.n_layers == 30
    # transformers < 5.18 converted the tokenizer with eos <|im_start|> and no pad token (the pin's floor)
    assert smollm2.tokenizer.eos_token == "<|im_end|>"


def assert_edit_takes_and_spares_neighbours(lm, editor) -> None:
    """Danielle Darrieux (French → English): the edit makes the new object top-1, at least 7 of
    the 10 neighbour prompts keep their prediction, and ``edit`` left the weights as they were."""
    case = load_cases("counterfact", limit=1)[0]
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    before = top1(lm, list(case.neighborhood_prompts))
    delta = editor.edit([case.request])
    target = lm.tokenizer(" " + case.request.target_new, add_special_tokens=False)["input_ids"][0]
    assert top1(lm, [case.request.text])[0] != target
    with applied(lm, delta):
        assert top1(lm, [case.request.text])[0] == target
        after = top1(lm, list(case.neighborhood_prompts))
    kept = sum(a == b for a, b in zip(before, after))
    assert kept >= 7, f"only {kept}/10 neighbour prompts kept their prediction"
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in state.items())


def test_rome_edit_changes_prediction_and_spares_neighbours(smollm2):
    assert_edit_takes_and_spares_neighbours(smollm2, get_editor("rome", smollm2))


def test_edit_of_a_new_fact_from_the_command_line_example(smollm2):
    # The subject opens this prompt (token 0, no context), so its key lies far from the
    # context-averaged k*; the default r-ROME key misses it on SmolLM2 (see README, "Known
    # weaknesses"), the reference ROME key, which fits the bare prompt exactly, does not.
    editor = get_editor("rome", smollm2, sets=["update_key=prompt"])
    req = EditRequest("{} belongs to the continent of", "Slovenia", "Antarctica")
    delta = editor.edit([req])
    with applied(smollm2, delta):
        s = score_pairs(smollm2, [(req.text, req.target_new)])[0]
    assert s.first_top1


def test_evaluate_writes_records_and_resumes(smollm2, tmp_path):
    cases = load_cases("counterfact", limit=2)
    editor = get_editor("rome", smollm2)
    cfg = editor.settings()
    run = RunInfo("rome", smollm2.name, "counterfact", cfg)
    run_evaluation(editor, cases[:1], tmp_path, run, show_progress=False)
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write('{"case_id": "1", "trunc')  # a run killed while writing its second record
    summary = run_evaluation(editor, cases, tmp_path, run, resume=True, show_progress=False)
    records = read_records(tmp_path / "records.jsonl")
    assert [r["case_id"] for r in records] == ["0", "1"]
    assert summary["n_cases"] == 2
    saved = json.loads((tmp_path / "summary.json").read_text())
    for name in ("efficacy", "paraphrase", "neighborhood", "efficacy_top1", "locality_top1",
                 "efficacy_acc", "paraphrase_acc", "locality_acc"):
        assert 0.0 <= saved["metrics"][name] <= 1.0
    assert "edit_s_median" in saved["timing"]
    assert (tmp_path / "summary.md").read_text().startswith("# rome on counterfact")


def test_memit_batch_edits_every_fact_and_spares_neighbours(smollm2):
    cases = load_cases("counterfact", limit=3)
    editor = get_editor("memit", smollm2)
    state = {k: v.clone() for k, v in smollm2.model.state_dict().items()}
    neighbours = [p for c in cases for p in c.neighborhood_prompts]
    before = top1(smollm2, neighbours)
    delta = editor.edit([c.request for c in cases])
    assert len(delta.weights) == len(editor.config.layers)
    with applied(smollm2, delta):
        for case in cases:
            s = score_pairs(smollm2, [(case.request.text, case.request.target_new)])[0]
            assert s.first_top1, f"{case.request.text!r} does not continue with {case.request.target_new!r}"
        after = top1(smollm2, neighbours)
    kept = sum(a == b for a, b in zip(before, after))
    assert kept >= 0.7 * len(neighbours), f"only {kept}/{len(neighbours)} neighbour prompts kept their prediction"
    assert all(torch.equal(v, smollm2.model.state_dict()[k]) for k, v in state.items())


def test_sequential_memit_saves_loads_and_undoes_exactly(smollm2, tmp_path):
    from robustedit.editors import load_edit
    from robustedit.eval.sequential import SequentialPlan, run_sequential

    cases = load_cases("counterfact-val", limit=6)
    editor = get_editor("memit", smollm2)
    cfg = editor.settings()
    state = {k: v.clone() for k, v in smollm2.model.state_dict().items()}
    run = RunInfo("memit", smollm2.name, "counterfact-val", cfg)
    summary = run_sequential(editor, cases[:4], cases[4:], tmp_path, run, SequentialPlan(4, 2))
    assert all(torch.equal(v, smollm2.model.state_dict()[k]) for k, v in state.items())
    assert summary["metrics"]["efficacy_top1"] >= 0.75  # 3 of the 4 facts, after both calls
    backup = load_edit(tmp_path / "edits", smollm2)
    with torch.no_grad():
        scores = score_pairs(smollm2, [(c.request.text, c.request.target_new) for c in cases[:4]])
    assert sum(s.first_top1 for s in scores) / 4 == summary["metrics"]["efficacy_top1"]
    backup.restore()
    assert all(torch.equal(v, smollm2.model.state_dict()[k]) for k, v in state.items())


def test_rome_with_rep_edits_trains_its_adaptor_and_undoes_exactly(smollm2, tmp_path):
    """ROME + REP (shipped settings: the authors' variant) on the first rep-valid case: the edit
    takes, the adaptor trains on the reference's key kinds and pulls them toward the goal (under
    its soft gate) while its gate stays shut at the bare prompt's key, neighbours mostly keep their
    answer, and the saved edit (weights + adaptor) loads and undoes bit-exactly."""
    import dataclasses

    from robustedit.editors import load_edit, save_edit, undo_saved
    from robustedit.data.perturb import RobustnessConfig, in_domain, robustness_probes

    case = load_cases("rep-valid", limit=1)[0]
    probes = robustness_probes(case, smollm2.tokenizer, RobustnessConfig())
    request = dataclasses.replace(case.request, in_domain=in_domain(probes))
    editor = get_editor("rome+rep", smollm2)
    cfg = editor.settings()
    state = {k: v.clone() for k, v in smollm2.model.state_dict().items()}
    before = top1(smollm2, list(case.neighborhood_prompts))
    delta = editor.edit([request])
    rep = delta.info["rep"][str(editor.config.layer)]
    assert rep["variant"] == "reference" and rep["similarity_soft_gate"] > rep["similarity_before"], rep
    assert set(rep["kinds"]) == {"prefix", "rephrase_subject", "shuffle_subject", "long_context"}
    assert rep["kinds"]["prefix"] == len(editor.base.context_templates()) - 1  # the original subject in each prefix
    assert rep["anchor_gate_open_share"] == 0.0, rep
    target = smollm2.tokenizer(" " + case.request.target_new, add_special_tokens=False)["input_ids"][0]
    with applied(smollm2, delta):
        assert top1(smollm2, [case.request.text])[0] == target
        after = top1(smollm2, list(case.neighborhood_prompts))
    kept = sum(a == b for a, b in zip(before, after))
    assert kept >= 0.7 * len(before), f"only {kept}/{len(before)} neighbour prompts kept their prediction"
    save_edit(tmp_path / "rep", smollm2, delta, [request], cfg)
    load_edit(tmp_path / "rep", smollm2)
    assert top1(smollm2, [case.request.text])[0] == target
    undo_saved(tmp_path / "rep", smollm2)
    assert all(torch.equal(v, smollm2.model.state_dict()[k]) for k, v in state.items())
    assert top1(smollm2, list(case.neighborhood_prompts)) == before


def test_gated_rep_opens_only_on_the_subjects_perturbed_keys(smollm2):
    """With the rep-table's "-gated" options (gate trained shut at the prompts' other tokens), the
    gate opens on most in-domain subject keys and on almost none of the other tokens, the edit
    prompt still gives the new target and neighbour prompts mostly keep their answer."""
    import dataclasses

    from robustedit.data.perturb import RobustnessConfig, in_domain, robustness_probes
    from robustedit.experiments.rep_table import row_editor

    case = load_cases("rep-valid", limit=1)[0]
    probes = robustness_probes(case, smollm2.tokenizer, RobustnessConfig())
    name, preset, sets = row_editor("rome+rep-gated", [])
    editor = get_editor(name, smollm2, config=preset, sets=sets)
    before = top1(smollm2, list(case.neighborhood_prompts))
    delta = editor.edit([dataclasses.replace(case.request, in_domain=in_domain(probes))])
    rep = delta.info["rep"][str(editor.config.layer)]
    assert rep["gate_open_share"] > 0.5 and rep["negative_gate_open_share"] < 0.05, rep
    target = smollm2.tokenizer(" " + case.request.target_new, add_special_tokens=False)["input_ids"][0]
    with applied(smollm2, delta):
        assert top1(smollm2, [case.request.text])[0] == target
        after = top1(smollm2, list(case.neighborhood_prompts))
    assert sum(a == b for a, b in zip(before, after)) >= 0.7 * len(before)


def test_ft_l_edit_changes_prediction_and_spares_neighbours(smollm2):
    editor = get_editor("ft-l", smollm2)  # the shipped SmolLM2 settings (layer 2, clamp 5e-3)
    cfg = editor.settings()
    assert list(cfg["layers"]) == [2] and cfg["norm_constraint"] == 5e-3
    assert_edit_takes_and_spares_neighbours(smollm2, editor)
