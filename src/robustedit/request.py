"""The unit of work of every editor: one requested rewrite of a fact."""

from __future__ import annotations

from dataclasses import dataclass, field

from robustedit.errors import UserError


@dataclass(frozen=True)
class Probe:
    """A prompt template with one ``{}`` and the subject written into it: the edit prompt with the
    subject rephrased or shuffled, or with unrelated text before it (``data.perturb``)."""

    template: str
    subject: str
    # What perturbation made it ("rephrase_subject", "shuffle_subject", "long_context"; "" if
    # unknown): an adaptor reports which kinds it trained on. Not part of the probe's identity.
    kind: str = field(default="", compare=False)

    @property
    def text(self) -> str:
        return self.template.format(self.subject)


@dataclass(frozen=True)
class EditRequest:
    """Rewrite ``prompt.format(subject)`` so that the model continues it with ``target_new``.

    ``prompt`` is a template with exactly one ``{}`` where the subject goes, e.g.
    ``"The mother tongue of {} is"``. Targets are stored without a leading space; the scoring
    code adds the space that separates them from the prompt.
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    # In-domain robustness probes (``data.perturb``) whose subject keys an editor may train on
    # (REP); the evaluation fills them in for editors that ask, nobody scores them as edits.
    in_domain: tuple[Probe, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or self.prompt.count("{}") != 1:
            raise UserError(f"the prompt must contain exactly one '{{}}' for the subject: {self.prompt!r}")
        if not self.subject or not self.subject.strip():
            raise UserError("the subject is empty")
        if not self.target_new or not self.target_new.strip():
            raise UserError("the new target is empty")
        object.__setattr__(self, "target_new", self.target_new.strip())
        if self.target_true is not None:
            object.__setattr__(self, "target_true", self.target_true.strip() or None)

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    @classmethod
    def from_filled_prompt(cls, prompt: str, subject: str, target_new: str, target_true: str | None = None) -> "EditRequest":
        """Build a request from a prompt that already contains the subject (first occurrence)."""
        if "{}" in prompt:
            return cls(prompt, subject, target_new, target_true)
        if not subject or subject not in prompt:
            raise UserError(f"the subject {subject!r} does not occur in the prompt {prompt!r}")
        i = prompt.index(subject)
        template = prompt[:i].replace("{", "{{").replace("}", "}}") + "{}" + prompt[i + len(subject):].replace("{", "{{").replace("}", "}}")
        return cls(template, subject, target_new, target_true)
