"""robustedit: edit the facts a language model knows, and measure how well the edit holds.

>>> import robustedit as re
>>> lm = re.load_model()                       # the embedded SmolLM2-135M-Instruct, offline
>>> editor = re.get_editor("rome", lm)       # the same settings as `robustedit edit --editor rome`
>>> delta = editor.edit([re.EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English")])
>>> with re.applied(lm, delta):
...     ...                                    # the edited model; restored exactly afterwards
"""

__version__ = "0.1.0"

from robustedit.errors import UserError  # noqa: E402
from robustedit.request import EditRequest  # noqa: E402


def __getattr__(name: str):
    # Heavy imports (torch, transformers) only when the API is actually used.
    if name in ("load_model", "LanguageModel"):
        from robustedit.models import load

        return getattr(load, name)
    if name in ("get_editor", "build_editor", "applied", "apply_delta", "Delta", "EDITORS"):
        from robustedit import editors

        return getattr(editors, name)
    if name in ("load_cases", "Case"):
        from robustedit import data

        return getattr(data, name)
    if name in ("run_evaluation", "RunInfo"):
        from robustedit.eval import runner

        return getattr(runner, name)
    if name == "generate":
        from robustedit.use.generate import generate

        return generate
    if name in ("read_facts", "edit_facts"):
        from robustedit.use import facts

        return getattr(facts, name)
    if name == "EvalPlan":
        from robustedit.eval.plan import EvalPlan

        return EvalPlan
    raise AttributeError(f"module 'robustedit' has no attribute {name!r}")


__all__ = ["EditRequest", "UserError", "load_model", "get_editor", "build_editor", "applied", "apply_delta", "load_cases", "run_evaluation", "RunInfo", "EvalPlan",
           "generate", "read_facts", "edit_facts"]
