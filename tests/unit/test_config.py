"""Typed configs: unknown keys and wrong types are one-line UserErrors; YAML and --set overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from robustedit.paths import resource
from robustedit.editors.settings import preset_names, resolve_editor
from robustedit.config import from_dict, merge, parse_overrides, read_yaml, to_dict
from robustedit.editors.rome import ROMEConfig
from robustedit.errors import UserError
from robustedit.stats.covariance import StatsConfig


@dataclass(frozen=True)
class Inner:
    n_tokens: int = 100
    corpus: str = "wiki"


@dataclass(frozen=True)
class Outer:
    lr: float = 0.5
    steps: int = 3
    verbose: bool = False
    sizes: tuple[int, ...] = (1, 2)
    pairs: tuple[tuple[int, int], ...] = ((5, 10),)
    names: list[str] = field(default_factory=list)
    note: str | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be >= 1")


# --- from_dict ----------------------------------------------------------------------------------


def test_defaults_and_round_trip():
    assert from_dict(Outer, {}) == Outer()
    assert from_dict(Outer, None) == Outer()
    cfg = from_dict(Outer, {"lr": 0.1, "inner": {"n_tokens": 7}})
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_unknown_key_suggests_close_names():
    with pytest.raises(UserError, match="(?i)did you mean 'steps'") as e:
        from_dict(Outer, {"step": 4})
    assert "Known keys" in str(e.value)
    with pytest.raises(UserError, match=r"inner\.'?n_token"):  # nested keys are named with their path
        from_dict(Outer, {"inner": {"n_token": 4}})
    with pytest.raises(UserError, match="(?i)did you mean 'n_tokens'"):
        from_dict(Outer, {"inner": {"n_token": 4}})


def test_int_is_coerced_to_float():
    cfg = from_dict(Outer, {"lr": 1})
    assert cfg.lr == 1.0 and type(cfg.lr) is float


@pytest.mark.parametrize(
    "data",
    [
        {"steps": "3"},
        {"steps": 2.5},
        {"steps": True},  # a bool is not an int here
        {"verbose": 1},
        {"note": 3},
        {"sizes": 5},
        {"sizes": [1, "x"]},
        {"inner": 3},
        {"inner": {"corpus": 1}},
    ],
    ids=repr,
)
def test_wrong_types_are_rejected(data):
    with pytest.raises(UserError):
        from_dict(Outer, data)


@pytest.mark.parametrize("value", ["fast", True, [0.1]], ids=repr)
def test_wrong_types_for_float_fields_are_rejected(value):
    try:
        cfg = from_dict(Outer, {"lr": value})
    except UserError:
        return
    pytest.fail(f"lr={value!r} was accepted as {cfg.lr!r}")


def test_post_init_errors_become_user_errors():
    with pytest.raises(UserError, match="steps must be"):
        from_dict(Outer, {"steps": 0})


def test_nested_dataclass_from_a_mapping_or_an_instance():
    cfg = from_dict(Outer, {"inner": {"n_tokens": 7}})
    assert cfg.inner == Inner(n_tokens=7)
    assert from_dict(Outer, {"inner": Inner(corpus="x")}).inner == Inner(corpus="x")


def test_sequences_are_coerced_to_the_declared_container():
    cfg = from_dict(Outer, {"sizes": [3, 4], "pairs": [[3, 5], [10, 10]], "names": ("a", "b")})
    assert cfg.sizes == (3, 4)
    assert cfg.pairs == ((3, 5), (10, 10))
    assert cfg.names == ["a", "b"]


def test_optional_accepts_none_and_the_type():
    assert from_dict(Outer, {"note": None}).note is None
    assert from_dict(Outer, {"note": "hi"}).note == "hi"


def test_real_configs_from_dicts():
    cfg = from_dict(ROMEConfig, {"layer": 2, "v_lr": 1, "stats": {"n_tokens": 4096},
                                 "context_template_length_params": [[3, 5]]})
    assert cfg.v_lr == 1.0 and isinstance(cfg.v_lr, float)
    assert cfg.stats == StatsConfig(n_tokens=4096)
    assert cfg.context_template_length_params == ((3, 5),)
    with pytest.raises(UserError, match="(?i)did you mean 'layer'"):
        from_dict(ROMEConfig, {"layr": 2})
    with pytest.raises(UserError, match="update_key"):
        from_dict(ROMEConfig, {"update_key": "nope"})


# --- overrides and YAML -------------------------------------------------------------------------


def test_parse_overrides():
    assert parse_overrides(["a.b=1", "c=[5, 10]", "d=0.3"]) == {"a": {"b": 1}, "c": [5, 10], "d": 0.3}
    assert parse_overrides(["x=true", "y=hello", "z=", "a.b.c=2", "a.b.d=3"]) == {
        "x": True, "y": "hello", "z": "", "a": {"b": {"c": 2, "d": 3}},
    }
    assert parse_overrides(["s=a=b"]) == {"s": "a=b"}  # split at the first '=' only
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["novalue"])


def test_overrides_build_a_config():
    cfg = from_dict(Outer, merge({"lr": 0.2, "inner": {"corpus": "c"}}, parse_overrides(["inner.n_tokens=5", "lr=2"])))
    assert cfg == Outer(lr=2.0, inner=Inner(n_tokens=5, corpus="c"))


def test_exponent_floats_without_a_dot_are_floats():
    cfg = from_dict(ROMEConfig, parse_overrides(["v_weight_decay=1e-3"]))
    assert cfg.v_weight_decay == pytest.approx(1e-3) and isinstance(cfg.v_weight_decay, float)


def test_merge_is_deep_and_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}, "d": 1}
    out = merge(base, {"a": {"b": 3}, "e": 4})
    assert out == {"a": {"b": 3, "c": 2}, "d": 1, "e": 4}
    assert base == {"a": {"b": 1, "c": 2}, "d": 1}


def test_read_yaml(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("layer: 3\nstats:\n  n_tokens: 4096\nv_lr: 0.3\n")
    assert read_yaml(good) == {"layer": 3, "stats": {"n_tokens": 4096}, "v_lr": 0.3}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml(empty) == {}


def test_read_yaml_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="does not exist"):
        read_yaml(tmp_path)  # a directory is not a config file
    bad = tmp_path / "bad.yaml"
    bad.write_text("layer: [1, 2\nv_lr: 0.3\n")
    with pytest.raises(UserError, match="not valid YAML"):
        read_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        read_yaml(listing)


# --- shipped files ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(p for p in resource("configs").glob("*/*.yaml") if p.parent.name != "presets"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_builds_its_editor_config(path):
    editor, model = path.parent.name, path.stem
    cls, config = resolve_editor(editor, model)
    assert isinstance(config, cls.config_cls)


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_builds_the_rep_editors(preset):
    for editor in ("rome+rep", "memit+rep"):
        resolve_editor(editor, "smollm2", config=preset)


def test_malformed_yaml_names_the_line(tmp_path):
    from robustedit.config import read_yaml
    from robustedit.errors import UserError

    bad = tmp_path / "bad.yaml"
    bad.write_text("layer: 2\nv_lr: [1, 2\nkl_factor: 0.0625\n")
    with pytest.raises(UserError, match=r"bad\.yaml is not valid YAML, line \d+, column \d+"):
        read_yaml(bad)
