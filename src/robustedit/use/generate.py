"""Text from the edited model, beside the unedited model's (``robustedit generate``).

:func:`continuation` continues one prompt, greedily (deterministic) or by seeded sampling;
:func:`before_after` does it with the model as it is and again with saved edits (folders written by
``robustedit edit --save`` / ``evaluate --sequential``) and/or an in-memory :class:`Delta` applied,
and restores the model bit-exactly afterwards, also when something fails. :func:`edit_and_compare`
edits first (``--editor E --subject S --target T``; the prompt then holds ``{}`` for the subject)
and :func:`generate` is all of it in one call, loading the model if none is given::

    >>> import robustedit as re
    >>> out = re.generate("The mother tongue of {} is", subject="Danielle Darrieux",
    ...                   editor="rome", target="English", max_new_tokens=20)
    >>> out["unedited"], out["edited"]

Decoding is a small loop of our own rather than ``model.generate``: it draws from a
``torch.Generator`` of its own on the CPU (the same text for a seed on every device, the global
random state untouched, the same random numbers before and after the edit, so a difference is the
edit's), and it runs the full forward pass at every step while an edit memory reroutes the model's
logits (SERAC, ``models.forward.reroutes_logits``), which a KV-cached step would bypass. It is the
single-prompt form of the sampling loop in ``eval/generation.py`` (fluency metric), which this layer
may not import.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from robustedit.editors.base import Delta, Editor, applied
from robustedit.editors.settings import get_editor, resolve_editor
from robustedit.editors.saved import load_edit
from robustedit.errors import UserError
from robustedit.models.forward import reroutes_logits
from robustedit.models.load import LanguageModel
from robustedit.models.text import fill
from robustedit.request import EditRequest
from robustedit.models.load import load_seeded


@dataclass(frozen=True)
class GenerateOptions:
    """How :func:`continuation` decodes; every function here takes these as keyword arguments."""

    max_new_tokens: int = 40  # at most this many tokens after the prompt
    chat: bool = False  # wrap the prompt as one user message in the tokenizer's chat template
    sample: bool = False  # False: greedy (argmax, deterministic); True: sample, seeded
    seed: int = 0  # the sampling's seed (unused when greedy)
    top_k: int | None = 50  # sample among the k most likely tokens; None: the whole vocabulary
    temperature: float = 1.0  # logits are divided by it before sampling
    stop_at_eos: bool = True  # stop at an end-of-sequence token (the tokenizer's or the model's)

    def __post_init__(self) -> None:
        def integer(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not integer(self.max_new_tokens) or self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be an integer >= 1, not {self.max_new_tokens!r}")
        if self.top_k is not None and (not integer(self.top_k) or self.top_k < 1):
            raise UserError(f"top_k must be an integer >= 1 (or None for the whole vocabulary), not {self.top_k!r}")
        if not integer(self.seed):
            raise UserError(f"the seed must be an integer, not {self.seed!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise UserError(f"temperature must be a number > 0, not {self.temperature!r}")


def options(gen: dict[str, Any]) -> GenerateOptions:
    """``GenerateOptions(**gen)``, with an unknown keyword named in one line."""
    unknown = sorted(set(gen) - set(GenerateOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown generation option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(GenerateOptions.__dataclass_fields__)}")
    return GenerateOptions(**gen)


# --- one continuation ----------------------------------------------------------------------------

def chat_prompt(lm: LanguageModel, prompt: str) -> str:
    """``prompt`` as one user message in ``lm``'s chat template, ready for the assistant's answer."""
    tok = lm.tokenizer
    if not getattr(tok, "chat_template", None):
        raise UserError(f"the tokenizer of {lm.name} has no chat template; generate without --chat "
                        "(or use an instruction-tuned model)")
    try:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
    except Exception as e:  # a template's own error (jinja): the user's model, not our bug
        raise UserError(f"the chat template of {lm.name} failed: {e}") from None
    if not isinstance(text, str):
        raise UserError(f"the chat template of {lm.name} did not render to text")
    return text


def prompt_ids(lm: LanguageModel, prompt: str, chat: bool = False) -> list[int]:
    """The tokens the model continues: ``prompt`` as the tokenizer encodes it (special tokens such as
    a BOS included), or the rendered chat template, which writes its special tokens itself."""
    if chat:
        ids = lm.tokenizer(chat_prompt(lm, prompt), add_special_tokens=False)["input_ids"]
    else:
        ids = lm.tokenizer(prompt)["input_ids"]
    if not ids:
        raise UserError("cannot generate from an empty prompt")
    return list(ids)


def stop_ids(lm: LanguageModel) -> set[int]:
    """End-of-sequence tokens: the tokenizer's and the model's generation config's (chat models end
    their turn with one, e.g. SmolLM2's ``<|im_end|>``)."""
    found: set[int] = set()
    config = getattr(lm.model, "generation_config", None)
    for value in (getattr(lm.tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, (list, tuple)):
            found.update(v for v in value if isinstance(v, int))
    return found


def _pick(logits: torch.Tensor, opts: GenerateOptions, generator: torch.Generator | None) -> int:
    """The next token: the argmax, or a draw from the (top-k, tempered) softmax made on the CPU."""
    if not opts.sample:
        return int(logits.argmax())
    scores = logits.float() / opts.temperature
    if opts.top_k is not None and opts.top_k < scores.shape[-1]:
        scores, index = scores.topk(opts.top_k)
    else:
        index = None
    probs = torch.softmax(scores, dim=-1).cpu()
    choice = int(torch.multinomial(probs, 1, generator=generator))
    return int(index[choice]) if index is not None else choice


@torch.inference_mode()
def continue_ids(lm: LanguageModel, ids: Sequence[int], opts: GenerateOptions = GenerateOptions()) -> list[int]:
    """The tokens generated after ``ids`` (the end-of-sequence token that stopped it excluded).

    KV-cached, one new token per step; while an edit memory reroutes the logits every step reruns
    the whole sequence instead (the same tokens, more compute; module docstring)."""
    if not ids:
        raise UserError("cannot generate from an empty prompt")
    limit = lm.max_positions
    if limit is not None and len(ids) + opts.max_new_tokens > limit:
        raise UserError(f"the prompt ({len(ids)} tokens) and {opts.max_new_tokens} new tokens exceed the "
                        f"{limit} positions of {lm.name}; ask for fewer new tokens or shorten the prompt")
    generator = torch.Generator(device="cpu").manual_seed(opts.seed) if opts.sample else None
    stops = stop_ids(lm) if opts.stop_at_eos else set()
    full = reroutes_logits(lm.model)
    sequence = torch.tensor([list(ids)], dtype=torch.long, device=lm.device)
    step, cache, new = sequence, None, []
    for _ in range(opts.max_new_tokens):
        if full:
            out = lm.model(input_ids=sequence, use_cache=False)
        else:
            out = lm.model(input_ids=step, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        token = _pick(out.logits[0, -1], opts, generator)
        if token in stops:
            break
        new.append(token)
        step = torch.tensor([[token]], dtype=torch.long, device=lm.device)
        sequence = torch.cat([sequence, step], dim=1)
    return new


def decode_continuation(tokenizer, ids: Sequence[int], new: Sequence[int]) -> str:
    """The text ``new`` adds after ``ids``: decoded together and the prompt's text cut off, so a
    tokenizer that drops a fragment's leading space (SentencePiece) keeps it."""
    head = tokenizer.decode(list(ids), skip_special_tokens=True)
    whole = tokenizer.decode(list(ids) + list(new), skip_special_tokens=True)
    return whole[len(head):] if whole.startswith(head) else tokenizer.decode(list(new), skip_special_tokens=True)


def continuation(lm: LanguageModel, prompt: str, **gen: Any) -> str:
    """The text ``lm`` writes after ``prompt`` (without the prompt), as the model is now.

    ``gen``: the fields of :class:`GenerateOptions` (``max_new_tokens=40, chat=False, sample=False,
    seed=0, top_k=50, temperature=1.0, stop_at_eos=True``). Greedy is deterministic; sampling with
    a seed gives the same text every time, whatever the global random state (left untouched)."""
    opts = options(gen)
    ids = prompt_ids(lm, prompt, opts.chat)
    return decode_continuation(lm.tokenizer, ids, continue_ids(lm, ids, opts))


# --- before and after an edit --------------------------------------------------------------------

@contextmanager
def saved_edits(lm: LanguageModel, edits: Iterable[Path | str]) -> Iterator[list[Path]]:
    """``lm`` with the saved edit folders loaded in order inside the block, restored bit-exactly
    after it (in reverse order), also when loading one of them or the block fails."""
    folders = [Path(e) for e in edits]
    backups = []
    try:
        for folder in folders:
            backups.append(load_edit(folder, lm))
        yield folders
    finally:
        for backup in reversed(backups):
            backup.restore()


def _check_folders(edits: Iterable[Path | str]) -> list[Path]:
    """Edit folders that exist, checked before any (slow) generation starts."""
    folders = [Path(e) for e in edits]
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; --edit takes a folder written by `robustedit edit --save`")
    return folders


def _result(prompt: str, text: str, unedited: str, edited: str | None, folders: list[Path],
            opts: GenerateOptions, **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "text": text, "unedited": unedited, "edited": edited,
            "edits": [str(f) for f in folders], **extra, "options": asdict(opts)}


def before_after(lm: LanguageModel, prompt: str, *, edits: Sequence[Path | str] = (), delta: Delta | None = None,
                 subject: str | None = None, **gen: Any) -> dict[str, Any]:
    """Continue ``prompt`` with ``lm`` as it is, then with ``edits`` (saved folders, loaded in order)
    and then ``delta`` applied on top; ``lm`` is restored bit-exactly before returning or raising.

    ``subject`` fills the prompt's ``{}``; without it the prompt is taken literally. ``delta`` must
    have been computed on the model with ``edits`` applied (as :func:`edit_and_compare` does).
    ``gen``: :class:`GenerateOptions`' fields; both sides use the same options and seed.

    Returns ``{"prompt", "text" (what was continued: the prompt with the subject),
    "unedited", "edited" (None when nothing was applied), "edits" (the folders), "options"}``.
    """
    opts = options(gen)
    folders = _check_folders(edits)
    text = fill(prompt, subject)[0] if subject is not None else prompt
    unedited = continuation(lm, text, **asdict(opts))
    edited = None
    if folders or delta is not None:
        with saved_edits(lm, folders), (applied(lm, delta) if delta is not None else nullcontext()):
            edited = continuation(lm, text, **asdict(opts))
    return _result(prompt, text, unedited, edited, folders, opts)


def edit_and_compare(lm: LanguageModel, editor: str | Editor, prompt: str, subject: str, target: str, *,
                     target_true: str | None = None, edits: Sequence[Path | str] = (),
                     config: str | None = None, sets: Sequence[str] = (), overrides: dict[str, Any] | None = None,
                     rephrase: Sequence[str] = (), **gen: Any) -> dict[str, Any]:
    """Edit ``prompt`` (with ``{}`` for ``subject``) to ``target``, and continue the filled prompt
    without and with the edit (``robustedit generate --editor E --subject S --target T``).

    ``editor`` is a registered name, built with ``get_editor(editor, lm, config=, sets=, **overrides)``
    (the settings ``robustedit edit`` uses), or an editor already built on ``lm``. With ``edits`` the
    new edit is computed and shown on top of those saved edits; "unedited" is ``lm`` as given.
    ``rephrase``: other names of the subject for REP's adaptor, as ``edit --rephrase``.
    The model is restored bit-exactly before returning or raising. Returns :func:`before_after`'s
    dict plus ``"editor"``, ``"target_new"`` and ``"delta_info"`` (the editor's diagnostics)."""
    opts = options(gen)
    folders = _check_folders(edits)
    request = EditRequest(prompt, subject, target, target_true)
    if isinstance(editor, str):
        editor = get_editor(editor, lm, config=config, sets=sets, **(overrides or {}))
    elif config is not None or sets or overrides:
        raise ValueError("config, sets and overrides apply to an editor given by name only")
    if editor.lm is not lm:
        raise ValueError("the editor was built on another model")
    if rephrase and not editor.wants_in_domain:
        raise UserError(f"rephrasings of the subject train REP's adaptor; {editor.name} has none (use rome+rep or memit+rep)")
    if editor.wants_in_domain:  # REP trains its adaptor on the in-domain probes, as `robustedit edit` gives them
        from robustedit.editors.rep import user_probes

        request = user_probes(request, list(rephrase), lm.tokenizer, editor.config.rep.robustness)
    unedited = continuation(lm, request.text, **asdict(opts))
    with saved_edits(lm, folders):
        delta = editor.edit([request])
        with applied(lm, delta):
            edited = continuation(lm, request.text, **asdict(opts))
    return _result(prompt, request.text, unedited, edited, folders, opts,
                   editor=editor.name, target_new=request.target_new, delta_info=delta.info)


def generate(prompt: str, *, lm: LanguageModel | None = None, model: str = "smollm2", edits: Sequence[Path | str] = (),
             editor: str | Editor | None = None, subject: str | None = None, target: str | None = None,
             target_true: str | None = None, config: str | None = None, sets: Sequence[str] = (),
             rephrase: Sequence[str] = (), dtype: str = "float32", device: str = "cpu", seed: int = 0,
             **gen: Any) -> dict[str, Any]:
    """``robustedit generate`` in one call: load ``model`` (unless ``lm`` is given, seeded with
    ``seed``), then :func:`edit_and_compare` when ``editor`` is given (``subject`` and ``target``
    needed), else :func:`before_after` with the saved ``edits``. ``seed`` also seeds the sampling.

    >>> generate("The Eiffel Tower is in", edits=["my-edit"])              # saved edit vs unedited
    >>> generate("The mother tongue of {} is", subject="Danielle Darrieux", editor="rome", target="English")
    """
    opts = options({"seed": seed, **gen})  # bad options fail before the model loads
    if editor is not None and (subject is None or target is None):
        raise UserError("an editor edits first: give the subject and the new target too (the prompt holds {} for the subject)")
    if editor is None and (target is not None or target_true is not None or rephrase):
        raise UserError("a target (or rephrasing) is only used to edit first: name an editor too")
    if editor is None and (config is not None or sets):
        raise UserError("config and sets are editor settings: name an editor too")
    if editor is not None and "{}" not in prompt:
        raise UserError(f"to edit first, the prompt must hold {{}} where the subject goes: {prompt!r}")
    folders = _check_folders(edits)
    if isinstance(editor, str):  # a bad editor name or setting fails before the model loads
        resolve_editor(editor, lm.name if lm is not None else model, config, sets)
    if lm is None:
        lm = load_seeded(model, dtype, device, seed)
    if editor is not None:
        return edit_and_compare(lm, editor, prompt, subject, target, target_true=target_true, edits=folders,
                                config=config, sets=sets, rephrase=rephrase, **asdict(opts))
    return before_after(lm, prompt, edits=folders, subject=subject, **asdict(opts))
