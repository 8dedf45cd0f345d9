"""Scoring against a direct computation, metrics on hand-made scores, the runner's files and resume."""

import json

import pytest
import torch

from robustedit.data import Case
from robustedit.editors import get_editor
from robustedit.errors import UserError
from robustedit.eval.metrics import case_metrics
from robustedit.eval.runner import RunInfo, read_records, run_evaluation
from robustedit.eval.scoring import TargetScore, length_batches, score_pairs
from robustedit.request import EditRequest


def test_score_pairs_matches_a_direct_forward(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    tok = lm.tokenizer
    pairs = [("The mother tongue of Danielle Darrieux is", "French"),
             ("The mother tongue of Danielle Darrieux is", "English"),
             ("Paris is the capital of", "France")]
    scores = score_pairs(lm, pairs)
    for (prompt, target), s in zip(pairs, scores):
        p = tok(prompt)["input_ids"]
        full = tok(prompt + " " + target)["input_ids"]
        t = full[len(p):]
        with torch.no_grad():
            logp = lm.model(torch.tensor([full])).logits[0].float().log_softmax(-1)
        picked = [logp[len(p) - 1 + j, tok_id].item() for j, tok_id in enumerate(t)]
        assert s.target == tuple(t)
        assert s.logprob == pytest.approx(sum(picked) / len(picked), abs=1e-4)
        assert s.next_token == int(logp[len(p) - 1].argmax())
        argmax = [int(logp[len(p) - 1 + j].argmax()) for j in range(len(t))]
        assert s.token_acc == pytest.approx(sum(a == b for a, b in zip(argmax, t)) / len(t))


def test_length_batches_respect_rows_and_padded_tokens():
    seqs = [(0,) * n for n in (2, 2, 3, 3, 3, 10, 10, 40)]
    batches = length_batches(seqs, batch_size=3, max_tokens=20)
    assert [s for b in batches for s in b] == seqs  # order kept, nothing lost
    assert all(len(b) <= 3 and (len(b) * len(b[-1]) <= 20 or len(b) == 1) for b in batches)
    assert [len(b) for b in batches] == [3, 2, 2, 1]  # the 40-token sequence goes alone


def test_score_pairs_is_the_same_whatever_the_batching(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    pairs = [("Paris is the capital of", "France"), ("A much longer prompt about " + "the city " * 30 + "is in", "Europe"),
             ("The mother tongue of Danielle Darrieux is", "French")]
    one_batch, tight = score_pairs(lm, pairs, max_tokens=10**6), score_pairs(lm, pairs, max_tokens=16)
    for a, b in zip(one_batch, tight):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5) and a.argmax == b.argmax


def _s(logprob, next_token=0, argmax=(0,), target=(0,)):
    return TargetScore(logprob=logprob, token_acc=sum(a == b for a, b in zip(argmax, target)) / len(target),
                       argmax=tuple(argmax), target=tuple(target), next_token=next_token)


def test_metrics_on_a_hand_made_case():
    pre = {"nbr_answer": [_s(-1, next_token=5, argmax=(5, 6), target=(5, 7)), _s(-1, next_token=8, argmax=(8,), target=(8,))]}
    post = {
        "edit_new": [_s(-0.5, next_token=3, argmax=(3,), target=(3,))],
        "edit_true": [_s(-2.0)],
        "para_new": [_s(-1.0, argmax=(3, 4), target=(3, 9)), _s(-3.0, argmax=(1,), target=(3,))],
        "para_true": [_s(-2.0), _s(-2.0)],
        "nbr_answer": [_s(-1, next_token=5, argmax=(5, 6), target=(5, 7)), _s(-1, next_token=9, argmax=(9,), target=(8,))],
        "nbr_new": [_s(-3.0), _s(-0.5)],
    }
    m = case_metrics(pre, post)
    assert m["efficacy"] == 1.0
    assert m["paraphrase"] == 0.5  # -1 > -2 wins, -3 > -2 loses
    assert m["neighborhood"] == 0.5  # -1 > -3 holds, -1 > -0.5 fails
    assert m["efficacy_top1"] == 1.0
    assert m["locality_top1"] == 0.5  # 5 → 5 kept, 8 → 9 changed
    assert m["efficacy_acc"] == 1.0
    assert m["paraphrase_acc"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["locality_acc"] == pytest.approx((1.0 + 0.0) / 2)  # (5,6)=(5,6); (8)≠(9)


def test_metrics_a_case_cannot_support_are_absent():
    post = {"edit_new": [_s(-0.5, next_token=1, target=(2,))]}
    m = case_metrics({}, post)
    assert m == {"efficacy_top1": 0.0, "efficacy_acc": 0.0}


SETTINGS = {"layer": 1, "stats": {"n_tokens": 2048, "seq_len": 64, "batch_size": 8},
            "context_template_length_params": [[3, 5]], "v_num_grad_steps": 3}


def _cases():
    return [Case(str(i), EditRequest("The mother tongue of {} is", s, "English", "French"),
                 paraphrase_prompts=(f"{s} speaks",), neighborhood_prompts=("The mother tongue of Léon Blum is",),
                 neighborhood_answer="French")
            for i, s in enumerate(["Danielle Darrieux", "Jean Gabin", "Michel Rocard"])]


def test_runner_writes_files_resumes_and_refuses_to_overwrite(tiny_lm_factory, tmp_path):
    lm = tiny_lm_factory("gpt2")
    editor = get_editor("rome", lm, **SETTINGS)
    run = RunInfo("rome", "tiny-gpt2", "hand-made", SETTINGS, command="test")
    cases = _cases()
    run_evaluation(editor, cases[:2], tmp_path, run, show_progress=False)
    first = read_records(tmp_path / "records.jsonl")
    with pytest.raises(UserError, match="already holds results"):
        run_evaluation(editor, cases, tmp_path, run, show_progress=False)
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write('{"case_id": "2", "metr')  # killed mid-write
    summary = run_evaluation(editor, cases, tmp_path, run, resume=True, show_progress=False)
    records = read_records(tmp_path / "records.jsonl")
    assert [r["case_id"] for r in records] == ["0", "1", "2"]
    assert records[:2] == first  # resumed cases are not redone
    assert summary["n_cases"] == 3
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["metrics"]["efficacy_top1"] == pytest.approx(
        sum(r["metrics"]["efficacy_top1"] for r in records) / 3)
    assert set(on_disk) >= {"editor", "model", "dataset", "n_cases", "config", "metrics", "timing"}
    assert "edit_s_median" in on_disk["timing"]
    assert "| efficacy_top1 |" in (tmp_path / "summary.md").read_text()


def test_runner_scores_robustness_probes_before_and_after_the_edit(tiny_lm_factory, tmp_path):
    from robustedit.data.perturb import RobustnessConfig

    lm = tiny_lm_factory("llama")
    editor = get_editor("rome", lm, **SETTINGS)
    case = Case("0", EditRequest("The mother tongue of {} is", "Danielle Yvonne Darrieux", "English", "French"),
                subject_rephrases=("Darrieux", "Mlle Darrieux", "D. Darrieux", "Danielle D."))
    rob = RobustnessConfig(n_per_kind=4, context_tokens=30)
    summary = run_evaluation(editor, [case], tmp_path, RunInfo("rome", "tiny", "hand-made", SETTINGS),
                             show_progress=False, robustness=rob)
    for kind in ("rephrase_subject", "shuffle_subject", "long_context"):
        for name in (kind, f"{kind}_id", f"{kind}_ood"):
            assert 0.0 <= summary["metrics"][name] <= 1.0, name
    plain = run_evaluation(editor, [case], tmp_path / "plain", RunInfo("rome", "tiny", "hand-made", SETTINGS),
                           show_progress=False)
    assert not any(k.startswith(("rephrase_subject", "shuffle", "long")) for k in plain["metrics"])


def test_the_summary_counts_edits_whose_optimisation_did_not_converge():
    from robustedit.eval.runner import RunInfo, summarize

    def record(converged):
        return {"metrics": {"efficacy_top1": 1.0}, "timing": {}, "pre": {},
                "edit": {"convergence": {"final_loss": 0.1, "target_prob": 0.9 if converged else 0.2,
                                         "converged": converged}}}

    batch = {"metrics": {}, "timing": {}, "pre": {},
             "edit": {"convergence": [{"converged": False}, {"converged": True}]}}  # MEMIT: one per request
    summary = summarize([record(True), record(False), batch], RunInfo("rome", "m", "d", {}))
    assert summary["edits_not_converged"] == 2
    assert summary["environment"]["robustedit"] and "torch" in summary["environment"]
    assert "edits_not_converged" not in summarize([{"metrics": {}, "timing": {}, "pre": {}, "edit": {}}],
                                                  RunInfo("mend", "m", "d", {}))
