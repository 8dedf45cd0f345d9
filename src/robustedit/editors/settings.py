"""The one way to build an editor: :func:`get_editor`, with the same settings the CLI uses.

Configuration layers, later wins: the editor's dataclass defaults → the shipped file
``resources/configs/<editor>/<model>.yaml`` (if any; an add-on such as ``rome+rep`` first takes
its base editor's file, so the base's measured layers and λ carry over) → ``config`` (a YAML file,
or the name of a bundled preset ``resources/configs/presets/<name>.yaml``, e.g. ``rep-paper``) →
``sets`` (``["key=value", ...]``, the CLI's ``--set``; an EasyEdit hparams file is translated,
``editors/easyedit.py``) → keyword ``overrides`` (Python values,
nested dicts for nested configs).

:func:`resolve_editor` does all of it without a model, so a command can refuse a bad setting
before the (slow) model load.

A model without a shipped file gets its edited layers from its depth (:func:`depth_defaults`),
laid just above the dataclass defaults, so any file or setting still wins and the layers are always
in range: a 2-layer model no longer gets ROME's layer 4.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from robustedit.config import from_dict, merge, parse_overrides, read_yaml
from robustedit.editors.base import EDITORS, Editor
from robustedit.editors.easyedit import from_easyedit, is_easyedit
from robustedit.errors import UserError
from robustedit.models.embedded import EMBEDDED
from robustedit.paths import resource

# --- default layers from the model's depth ---------------------------------------------------------
#
# The references' choices (0-based layer / number of decoder layers):
#   ROME   GPT-J 6B 5/28 (Meng et al. 2022, "Locating and Editing Factual Associations in GPT";
#          kmeng01/rome hparams/ROME/EleutherAI_gpt-j-6B.json); Llama-2-7B and Llama-3-8B 5/32
#          (EasyEdit hparams/ROME/llama-7b.yaml, llama3-8b.yaml); GPT-2 medium 8/24, large 12/36,
#          XL 17/48 (kmeng01/rome hparams/ROME/gpt2-xl.json; EasyEdit hparams/ROME/gpt2-medium.json,
#          gpt2-large.json); GPT-NeoX-20B 15/44 (kmeng01/memit hparams/ROME/EleutherAI_gpt-neox-20b.json).
#   MEMIT  GPT-J 3-8 of 28 and GPT-2 XL 13-17 of 48 (Meng et al. 2023, "Mass-Editing Memory in a
#          Transformer"; kmeng01/memit hparams/MEMIT/EleutherAI_gpt-j-6B.json, EasyEdit
#          hparams/MEMIT/gpt2-xl.yaml); Llama-2-7B, Llama-3.2-1B and Qwen2.5-7B 4-8 (EasyEdit
#          hparams/MEMIT/llama-7b.yaml, llama3.2-1b.yaml, qwen2.5-7b.yaml).
#   Ours   SmolLM2-135M: ROME 2/30, MEMIT 2-6; Gemma 3 270M: ROME 1/18 (resources/configs, measured).
# The Llama-like architectures robustedit mostly meets follow GPT-J and Llama-2: the subject's facts
# are written early, about a fifth of the way up; GPT-2 edits later (about a third) and our two small
# models earlier. The rule takes the GPT-J / Llama fraction: ROME edits layer ⌊0.18·n⌋ (5 for n = 28
# and n = 32, as the references), MEMIT five consecutive layers from one below it (4-8 for n = 32,
# EasyEdit's Llama-2-7B range; GPT-J's reference is 3-8), at most a quarter of the model (fewer
# layers below 20), shifted down to stay in range. FT-L fine-tunes ROME's layer, as its shipped files
# do. A model's own file (resources/configs/<editor>/<model>.yaml, chosen by measurement) or any
# setting always wins over this rule.


def rome_layer_for_depth(n_layers: int) -> int:
    """ROME's edited layer for a model of ``n_layers`` decoder layers: ⌊0.18·n⌋ (see above)."""
    if n_layers < 1:
        raise ValueError(f"a model has at least one layer, not {n_layers}")
    return n_layers * 9 // 50


def memit_layers_for_depth(n_layers: int) -> tuple[int, ...]:
    """MEMIT's edited layers for ``n_layers`` decoder layers: min(5, ⌊n/4⌋) consecutive layers (at
    least one) from one below ROME's layer, shifted down if they would pass the top."""
    width = max(1, min(5, n_layers // 4))
    start = min(max(0, rome_layer_for_depth(n_layers) - 1), n_layers - width)
    return tuple(range(start, start + width))


DEPTH_RULES: dict[str, Callable[[int], dict]] = {
    "rome": lambda n: {"layer": rome_layer_for_depth(n)},
    "memit": lambda n: {"layers": list(memit_layers_for_depth(n))},
    "ft-l": lambda n: {"layers": [rome_layer_for_depth(n)]},  # the layer ROME edits (configs/ft-l/*.yaml)
}


def depth_defaults(editor: str, n_layers: int | None) -> dict:
    """The layer settings of ``editor`` (or of the base editor it extends) for a model of
    ``n_layers`` decoder layers; empty when the depth is unknown or the editor names no layer by
    index (MEND and SERAC count from the top, which fits any depth)."""
    name: str | None = editor
    while n_layers is not None and name is not None:
        if name in DEPTH_RULES:
            return DEPTH_RULES[name](n_layers)
        name = EDITORS.get(name).extends if name in EDITORS else None
    return {}


def model_depth(model: str) -> int | None:
    """The number of decoder layers of ``model`` (embedded name, local folder or hub id), read from
    its ``config.json`` without loading it or using the network; None if it cannot be found."""
    if model in EMBEDDED:
        entry = EMBEDDED.get(model)
        path = entry.cache_dir / "config.json"
        if not path.is_file():  # not converted yet
            return entry.n_layers
    elif Path(model).expanduser().is_dir():
        path = Path(model).expanduser() / "config.json"
    elif "/" in model:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model, "config.json")
        except Exception:  # not a valid repo id
            return None
        if not isinstance(found, str):
            return None
        path = Path(found)
    else:
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for cfg in (config.get("text_config") or {}, config):  # a multimodal config nests its text model's
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(cfg.get(key), int) and cfg[key] > 0:
                return cfg[key]
    return None


def shipped_config(editor: str, model: str) -> dict:
    """The shipped settings of ``editor`` for ``model`` (its base editor's first, for an add-on)."""
    cls = EDITORS.get(editor) if editor in EDITORS else None
    settings = shipped_config(cls.extends, model) if cls is not None and cls.extends else {}
    path = resource("configs", editor, f"{Path(model).name}.yaml")
    return merge(settings, read_yaml(path)) if path.is_file() else settings


def preset_names() -> list[str]:
    """The bundled presets ``config`` accepts by name."""
    return sorted(p.stem for p in resource("configs", "presets").glob("*.yaml"))


def config_path(config_file: str) -> Path:
    """A ``config`` value as a file: the file itself, or a bundled preset of that name."""
    path = Path(config_file).expanduser()
    if path.is_file() or Path(config_file).suffix in (".yaml", ".yml") or "/" in config_file:
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        return path
    if config_file in preset_names():
        return resource("configs", "presets", f"{config_file}.yaml")
    raise UserError(f"--config {config_file!r} is neither a YAML file nor a bundled preset "
                    f"({', '.join(preset_names())})")


def editor_settings(editor: str, model: str, config: str | None = None, sets: Iterable[str] = (),
                    overrides: dict[str, Any] | None = None) -> dict:
    """The merged override mapping for ``editor`` on ``model`` (validated by :func:`resolve_editor`)."""
    settings = shipped_config(editor, model)
    if config:
        path = config_path(config)
        given = read_yaml(path)
        if is_easyedit(given):  # an EasyEdit hparams file: its keys translated, or refused with a list
            cls = EDITORS.get(editor) if editor in EDITORS else None
            given = from_easyedit(given, editor, cls.extends if cls else None, str(path))
        settings = merge(settings, given)
    return merge(merge(settings, parse_overrides(list(sets))), overrides or {})


def resolve_editor(editor: str, model: str, config: str | None = None, sets: Iterable[str] = (),
                   overrides: dict[str, Any] | None = None, *, n_layers: int | None = None) -> tuple[type[Editor], Any]:
    """The editor class and its validated config, before any model is loaded (mistakes fail fast).

    ``n_layers``: the model's depth, for the default layers (:func:`depth_defaults`); read from the
    model's ``config.json`` when not given (:func:`model_depth`)."""
    if "+" in editor and editor not in EDITORS:
        base, addon = editor.split("+", 1)
        EDITORS.get(base)
        raise UserError(f"add-on {addon!r} of {editor!r} is not available yet; editors: {', '.join(EDITORS.names())}")
    cls = EDITORS.get(editor)
    settings = editor_settings(editor, model, config, sets, overrides)
    depth = n_layers if n_layers is not None else model_depth(model)
    return cls, from_dict(cls.config_cls, merge(depth_defaults(editor, depth), settings))


def get_editor(name: str, lm, *, config: str | None = None, sets: Iterable[str] = (), **overrides: Any) -> Editor:
    """The registered editor ``name`` on ``lm`` with the CLI's settings for ``lm``.

    >>> editor = get_editor("memit", lm)                          # shipped SmolLM2 layers and λ
    >>> editor = get_editor("rome", lm, layer=3)                   # one setting changed
    >>> editor = get_editor("rome+rep", lm, config="rep-paper", sets=["rep.tau=0.8"])
    """
    cls, resolved = resolve_editor(name, lm.name, config, sets, overrides, n_layers=lm.n_layers)
    return cls(lm, resolved)


def build_editor(name: str, lm, overrides: dict[str, Any] | None = None) -> Editor:
    """Deprecated spelling of :func:`get_editor` (kept for scripts written against 0.1.0; it now
    applies the shipped settings for ``lm`` too, as the CLI always did)."""
    return get_editor(name, lm, **(overrides or {}))
