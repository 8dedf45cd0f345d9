"""The contract every registered editor keeps, on tiny random models of two architectures.

For every name in ``EDITORS`` (an editor registered tomorrow is tested automatically):

1. ``edit([request])`` computes and does not mutate: every parameter and buffer bit-identical,
   no hook, adaptor or edit memory left on the model, the same outputs;
2. inside ``with applied(lm, delta):`` the log-probability of the new target's first token after
   the edit prompt is higher than before;
3. inside the block the model carries exactly the delta (weights ``W + ΔW`` bit for bit, its
   adaptors and memory entries installed); after it every parameter is bit-identical to the
   original, nothing is left attached and the outputs are the original's;
4. an exception inside the block propagates and the model is still restored bit-exactly;
5. a delta that can be saved (``store.save_edit``) round-trips: loading it gives bit for bit the
   weights and logits of the delta applied, and undoing the load restores the model exactly; a
   delta that cannot be saved (edits kept in an edit memory: SERAC) is refused with a
   ``UserError`` saying so, and nothing is written.

``CHEAP`` holds small settings per editor so the whole file runs in seconds. An editor without an
entry is still tested, with its defaults; if those do not work on a 3-layer model the test fails
and says to add an entry. Editors that must be trained first (``Editor.trainer``: MEND, SERAC and
their +sss add-ons) are trained here for a few steps on a hand-made file whose first case is the
contract's request (what is tested is the contract, not how a trained editor generalises).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny import same_state, state_copy

from robustedit.editors import (
    EDITORS,
    Delta,
    applied,
    get_editor,
    load_edit,
    resolve_editor,
    save_edit,
)
from robustedit.editors.adaptors import AdaptorStack
from robustedit.editors.adaptors import uninstall as uninstall_adaptor
from robustedit.editors.memory import EditMemory
from robustedit.editors.memory import uninstall as uninstall_memory
from robustedit.errors import UserError
from robustedit.models.text import encode, target_ids
from robustedit.request import EditRequest

ARCHS = ("llama", "gpt2")  # a gated MLP with nn.Linear; GPT-2's Conv1D (weights stored in × out) and learned positions

# The subject ends the prompt: in a random model attention is diffuse, so a change at the subject
# reaches the next position directly (tests/unit/test_rome.py).
REQUEST = EditRequest("The mother tongue of {}", "Danielle Darrieux", "English", "French")
PROBE = "The Eiffel Tower is located in the city of"  # an unrelated prompt whose outputs are compared too

STATS = {"n_tokens": 2048, "seq_len": 64, "batch_size": 8}
ROME = {"layer": 1, "stats": STATS, "context_template_length_params": [[3, 5]], "v_num_grad_steps": 10}
MEMIT = {"layers": [0, 1], "stats": STATS, "context_template_length_params": [[3, 5]], "v_num_grad_steps": 10,
         "mom2_update_weight": 10.0}  # λ = 10: the reference's 15000 is for GPT-J's MLP width 16384
# τ = 0.5 and anchor weight 1: with the authors' 0.9 and 5e4 a tiny model's gates stay shut on every
# input (tests/unit/test_rep.py), the adaptors would change nothing and their restore and round trip
# would go unobserved. Long-context probes of 64 tokens, not 512: the tiny GPT-2 has 256 positions.
REP = {"steps": 20, "lr": 1e-2, "tau": 0.5, "anchor_weight": 1.0, "robustness": {"context_tokens": 64}}
FT_L = {"layers": [1, 2], "steps": 20, "lr": 1e-2, "norm_constraint": 0.05}
LOOP = {"val_every": 0, "save_every": 1000, "log_every": 1000, "val_cases": 2, "val_fraction": 0.2}
# Trained editors: `train` is used by `train_editor` below; the rest at training and at edit time.
MEND = {"rank": 8, "init_lr": 1e-2, "train": {"steps": 4, "batch_size": 2, "lr": 1e-3, "lr_lr": 1e-3, **LOOP}}
SERAC = {"head_dim": 16, "cf_layers": 2, "classifier_layer": 1,
         "train": {"steps": 20, "batch_size": 4, "lr": 3e-3, "classifier_lr": 3e-2, **LOOP}}

# Small settings per registered editor, for speed on a 3-layer model of width 32 (module docstring).
CHEAP: dict[str, dict] = {
    "rome": ROME,
    "rome+rep": {**ROME, "rep": REP},
    "memit": MEMIT,
    "memit+rep": {**MEMIT, "rep": REP},
    "ft-l": FT_L,
    "ft-l+sss": FT_L,
    "mend": MEND,
    "mend+sss": MEND,
    "serac": SERAC,
    "serac+sss": SERAC,
}

# Training edits for MEND and SERAC in the zsRE layout; the first is REQUEST.
PEOPLE = ["Danielle Darrieux", "Michael Jordan", "Pablo Picasso", "Marie Curie", "Leo Tolstoy", "Frida Kahlo",
          "Albert Einstein", "Greta Garbo", "Louis Armstrong", "Edith Piaf"]
LANGUAGES = ["English", "German", "Italian", "Spanish", "Dutch", "Polish"]


def training_file(directory: Path) -> str:
    records = [{"subject": s, "src": REQUEST.prompt.format(s), "rephrase": f"The native language of {s}",
                "alt": REQUEST.target_new if i == 0 else LANGUAGES[i % len(LANGUAGES)],
                "answers": ["French"], "pred": "French",
                "loc": f"nq question: who wrote book number {i}", "loc_ans": "Someone Else"}
               for i, s in enumerate(PEOPLE)]
    path = directory / "train.json"
    path.write_text(json.dumps(records))
    return str(path)


def train(name: str, lm, settings: dict, directory: Path) -> Path:
    """The folder of editor ``name`` trained for ``lm`` for a few steps on :func:`training_file`."""
    from robustedit.training.trainers import train_editor

    settings = {**settings, "train": {**settings.get("train", {}), "dataset": training_file(directory)}}
    _, config = resolve_editor(name, lm.name, overrides=settings)
    out, _ = train_editor(name, lm, config, directory / "trained")
    return out


# --- observing the model -------------------------------------------------------------------------


def logits(lm, text: str) -> torch.Tensor:
    """The logits of ``text`` by a plain forward with token ids (the path SERAC's memory serves)."""
    ids = torch.tensor([encode(lm.tokenizer, text)])
    with torch.no_grad():
        return lm.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].detach().clone()


def outputs(lm) -> list[torch.Tensor]:
    return [logits(lm, REQUEST.text), logits(lm, PROBE)]


def same_outputs(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def first_target_token(lm) -> int:
    return target_ids(lm.tokenizer, REQUEST.text, REQUEST.target_new)[0]


def target_logprob(lm) -> float:
    """log P(first token of " " + target_new | edit prompt)."""
    return float(torch.log_softmax(logits(lm, REQUEST.text)[-1].double(), -1)[first_target_token(lm)])


HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
         "_state_dict_hooks", "_load_state_dict_pre_hooks")


def attachments(lm) -> dict[str, tuple]:
    """Everything besides the weights by which a model's forward or training can be changed: the
    hooks of every kind on every module, robustedit's installed adaptors and edit memory, train/eval
    mode, gradient flags and stored gradients."""
    from torch.nn.modules import module as torch_module

    out = {}
    for name, m in lm.model.named_modules():
        hooks = tuple(tuple(getattr(m, kind, {})) for kind in HOOKS)
        installed = tuple(sorted(k for k in vars(m) if k.startswith("_robustedit")
                                 or k in (AdaptorStack.ATTRIBUTE, EditMemory.ATTRIBUTE)))
        out[name] = (hooks, installed, m.training)
    out["<requires_grad>"] = tuple(p.requires_grad for p in lm.model.parameters())
    out["<no grad stored>"] = tuple(p.grad is None for p in lm.model.parameters())
    out["<global hooks>"] = (len(torch_module._global_forward_hooks), len(torch_module._global_forward_pre_hooks))
    return out


def installed_adaptors(lm, delta: Delta) -> dict[str, list[str]]:
    """The tags of the adaptors installed on each module the delta adapts."""
    modules = dict(lm.model.named_modules())
    return {n: [a.tag() for a in AdaptorStack.installed(modules[n])] for n in delta.adaptors}


# --- one edit per (editor, architecture), shared by the tests ----------------------------------


class Run:
    """The editor built (trained first if it must be) and ``edit([REQUEST])`` called once on the
    tiny model, with the model's state, attachments and outputs before and after."""

    def __init__(self, name: str, lm, directory: Path) -> None:
        self.name, self.lm = name, lm
        self.before = state_copy(lm)
        self.attached = attachments(lm)
        self.outputs = outputs(lm)
        self.logprob = target_logprob(lm)
        settings, failed = CHEAP.get(name), None
        try:
            if settings is not None and EDITORS.get(name).trainer:
                settings = {**settings, "checkpoint": str(train(name, lm, settings, directory))}
            self.editor = get_editor(name, lm, **(settings or {}))
            torch.manual_seed(0)
            self.delta = self.editor.edit([REQUEST])
        except Exception as e:
            if settings is not None:
                raise
            failed = f"{type(e).__name__}: {e}"
        if failed:  # outside the except: one message, not a chain of tracebacks
            pytest.fail(f"editor {name!r} has no entry in CHEAP (tests/unit/test_editor_contract.py) and its "
                        f"defaults do not work on a tiny {lm.name} ({failed}); add cheap settings for it "
                        "there (and training settings if it must be trained)", pytrace=False)
        assert isinstance(self.delta, Delta), f"{name}.edit returned a {type(self.delta).__name__}, not a Delta"
        self.changed_by_edit = same_state(lm, self.before)
        self.attached_after_edit = attachments(lm)
        self.outputs_after_edit = outputs(lm)


@pytest.fixture(scope="module")
def runs() -> dict:
    return {}


@pytest.fixture(params=EDITORS.names())
def editor_name(request) -> str:
    return request.param


@pytest.fixture(params=ARCHS)
def contract_arch(request) -> str:
    return request.param


@pytest.fixture
def run(editor_name, contract_arch, tiny_lm_factory, runs, tmp_path_factory) -> Iterator[Run]:
    """Computed in a function-scoped fixture (once per key), so that conftest's environment is in
    place: one thread, and the session's cache folder for the key statistics. After the test the
    shared model is put back by force if the test found it left changed, so that one broken
    restore fails its own tests and not every later one."""
    key = (editor_name, contract_arch)
    if key not in runs:
        directory = tmp_path_factory.mktemp(f"contract-{editor_name}-{contract_arch}")
        runs[key] = Run(editor_name, tiny_lm_factory(contract_arch), directory)
    yield runs[key]
    repair(runs[key])


def repair(run: Run) -> None:
    """Put the shared model back as it was before the run's edit, whatever the code under test
    left on it: adaptors and memory entries removed, hooks it did not have dropped, flags, modes
    and weights copied back."""
    for module in run.lm.model.modules():
        for adaptor in AdaptorStack.installed(module):
            uninstall_adaptor(module, adaptor)
    for entry in EditMemory.installed(run.lm.model):
        uninstall_memory(run.lm.model, entry)
    for name, m in run.lm.model.named_modules():
        hooks, _, training = run.attached[name]
        for kind, kept in zip(HOOKS, hooks):
            for key in [k for k in getattr(m, kind, {}) if k not in kept]:
                for table in (kind, "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                              "_forward_pre_hooks_with_kwargs"):
                    getattr(m, table, {}).pop(key, None)
        m.training = training
    for p, flag in zip(run.lm.model.parameters(), run.attached["<requires_grad>"]):
        p.requires_grad_(flag)
        p.grad = None
    if same_state(run.lm, run.before):
        with torch.no_grad():
            run.lm.model.load_state_dict(run.before)


def assert_original(run: Run, when: str) -> None:
    changed = same_state(run.lm, run.before)
    assert changed == [], f"{run.name}: {changed} differ from the original {when}"
    assert attachments(run.lm) == run.attached, f"{run.name}: hooks, adaptors or memory left on the model {when}"
    assert same_outputs(outputs(run.lm), run.outputs), f"{run.name}: the outputs differ from the original's {when}"


def assert_carries(run: Run, delta: Delta) -> None:
    """The model carries exactly ``delta``: W + ΔW bit for bit (the arithmetic of apply_delta),
    nothing else changed, its adaptors and memory entries installed."""
    params = dict(run.lm.model.named_parameters())
    assert set(same_state(run.lm, run.before)) <= set(delta.weights)
    for n, d in delta.weights.items():
        expected = run.before[n] + d.to(run.before[n].dtype)
        assert torch.equal(params[n].detach(), expected), f"{run.name}: {n} is not W + ΔW"
    assert installed_adaptors(run.lm, delta) == {n: [a.tag()] for n, a in delta.adaptors.items()}
    assert [e.request for e in EditMemory.installed(run.lm.model)] == [e.request for e in delta.memory]


# --- the contract --------------------------------------------------------------------------------


def test_every_cheap_setting_names_a_registered_editor():
    assert set(CHEAP) <= set(EDITORS.names()), f"stale entries: {sorted(set(CHEAP) - set(EDITORS.names()))}"


def test_the_request_does_not_already_predict_its_target(tiny_lm_factory, contract_arch):
    lm = tiny_lm_factory(contract_arch)
    assert int(logits(lm, REQUEST.text)[-1].argmax()) != first_target_token(lm), \
        "choose a REQUEST whose new target is not already the top prediction"


def test_edit_computes_and_does_not_mutate(run):
    assert run.changed_by_edit == [], f"building or calling {run.name}.edit changed {run.changed_by_edit}"
    assert run.attached_after_edit == run.attached, \
        f"building or calling {run.name}.edit left hooks, adaptors, memory or gradient state on the model"
    assert same_outputs(run.outputs_after_edit, run.outputs), f"{run.name}.edit changed the model's outputs"
    assert_original(run, "after edit()")


def test_applied_moves_the_prediction_toward_the_target(run):
    with applied(run.lm, run.delta):
        after = target_logprob(run.lm)
    assert after > run.logprob, f"{run.name}: log P(target) {run.logprob:.4f} -> {after:.4f}"


def test_applied_carries_the_delta_and_restores_bit_exactly(run):
    with applied(run.lm, run.delta):
        assert_carries(run, run.delta)
        assert not same_outputs(outputs(run.lm), run.outputs), f"{run.name}: the applied delta changes nothing"
    assert_original(run, "after the applied block")


def test_applied_restores_after_an_exception(run):
    class Boom(Exception):
        pass

    with pytest.raises(Boom), applied(run.lm, run.delta):
        assert not same_outputs(outputs(run.lm), run.outputs)
        raise Boom
    assert_original(run, "after an exception inside the applied block")


def test_saved_edit_round_trips_or_is_refused(run, tmp_path):
    folder = tmp_path / "edit"
    if run.delta.memory:  # what store.save_edit cannot write (store.MEMORY_NOT_SAVED)
        with pytest.raises(UserError, match="cannot be saved"):
            save_edit(folder, run.lm, run.delta, [REQUEST], {})
        assert not folder.exists()
        assert_original(run, "after a refused save")
        return
    save_edit(folder, run.lm, run.delta, [REQUEST], {})
    assert_original(run, "after save_edit")
    with applied(run.lm, run.delta):
        expected, edited = outputs(run.lm), state_copy(run.lm)
    if run.delta.adaptors:  # else a load that dropped them would pass unseen
        with applied(run.lm, Delta(run.delta.weights)):
            assert not same_outputs(outputs(run.lm), expected), \
                f"{run.name}'s adaptors change no output here; choose settings under which they open"
    backup = load_edit(folder, run.lm)
    try:
        assert same_state(run.lm, edited) == [], f"{run.name}: the loaded weights differ from the applied delta's"
        assert installed_adaptors(run.lm, run.delta) == {n: [a.tag()] for n, a in run.delta.adaptors.items()}
        assert same_outputs(outputs(run.lm), expected), f"{run.name}: the loaded edit's logits differ from the delta's"
    finally:
        backup.restore()
    assert_original(run, "after undoing the loaded edit")
