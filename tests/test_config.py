import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import RunConfig, load_toml_config, parse_assignments
from shared.errors import ConfigError
from tests.support import REPO


def flatten(table: dict, prefix: str = "") -> dict:
    """TOML's nested tables as Flower flattens them: ``data.path``."""
    out = {}
    for key, value in table.items():
        out |= flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def test_pyproject_defaults_equal_runconfig_defaults():
    declared = flatten(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    defaults = RunConfig().to_flower_config()
    assert declared == {k: defaults[k] for k in declared}
    missing = sorted(set(defaults) - set(declared))
    assert not missing, f"run-config keys missing from [tool.flwr.app.config]: {missing}"


def test_values_are_coerced_from_strings():
    cfg = RunConfig.from_mapping({"train.lr": "0.01", "train.batch-size": "64", "eval.full-rank": "false",
                                  "model.name": "gmf"})
    assert (cfg.train.lr, cfg.train.batch_size, cfg.eval.full_rank, cfg.model.name) == (0.01, 64, False, "gmf")


@pytest.mark.filterwarnings("ignore:run-config key")
def test_old_flat_keys_load_with_a_deprecation_warning_naming_the_new_key():
    with pytest.warns(FutureWarning, match="'target-epsilon' is now 'dp.target-epsilon'"):
        cfg = RunConfig.from_mapping({"target-epsilon": 2.0, "item-lr": -1.0, "bias-lr": 0.5})
    assert cfg.dp.target_epsilon == 2.0 and cfg.train.item_lr == 0.0 and cfg.train.bias_lr == 0.5
    assert RunConfig.from_mapping({"item-lr": 0.0}).train.freeze_items  # the old "0 = frozen" sentinel


def test_grouped_tables_and_dotted_keys_are_the_same(tmp_path):
    a = tmp_path / "a.toml"
    a.write_text('[dp]\ntarget-epsilon = 2.0\n[model]\nname = "gmf"\n')
    b = tmp_path / "b.toml"
    b.write_text('dp.target-epsilon = 2.0\nmodel.name = "gmf"\n')
    assert RunConfig.from_mapping(load_toml_config(a)) == RunConfig.from_mapping(load_toml_config(b))
    assert RunConfig.from_mapping(load_toml_config(a)).to_flower_config()["dp.target-epsilon"] == 2.0


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"lrr": 0.1}, "lrr"),
        ({"dp.epsilon": 1.0}, "dp.epsilon"),
        ({"model.name": "svd"}, "model.name"),
        ({"train.lr": 0}, "train.lr"),
        ({"train.lr": "fast"}, "train.lr"),
        ({"train.batch-size": 1.5}, "train.batch-size"),
        ({"train.batch-size": True}, "train.batch-size"),
        ({"eval.full-rank": "yes"}, "eval.full-rank"),
        ({"model.mlp-layers": "64,,x"}, "model.mlp-layers"),
        ({"model.mlp-layers": "64,-2"}, "model.mlp-layers"),
        ({"train.lr": float("nan")}, "train.lr"),
        ({"lr": "fast"}, "train.lr"),  # an old key's error names its new key
        ({"dp.noise": "central", "dp.mechanism": "local-sgd"}, "dp.noise"),  # a cross-key rule names a key
    ],
)
@pytest.mark.filterwarnings("ignore:run-config key")
def test_bad_values_name_the_key(mapping, key):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(mapping)
    assert err.value.key == key


@pytest.mark.filterwarnings("ignore:run-config key")
@given(st.dictionaries(st.text(max_size=12), st.one_of(st.text(max_size=8), st.integers(), st.floats(),
                                                        st.booleans()), max_size=4))
def test_any_mapping_gives_a_config_or_a_config_error(mapping):
    try:
        cfg = RunConfig.from_mapping(mapping)
    except ConfigError:
        return
    assert isinstance(cfg, RunConfig)


@pytest.mark.filterwarnings("ignore:run-config key")
def test_parse_assignments_and_toml(tmp_path):
    assert parse_assignments(["lr=0.1", "model = gmf"]) == {"lr": "0.1", "model": "gmf"}
    with pytest.raises(ConfigError):
        parse_assignments(["novalue"])
    good = tmp_path / "p.toml"
    good.write_text('model = "gmf"\nlr = 0.01\n')
    assert RunConfig.from_mapping(load_toml_config(good)).model.name == "gmf"
    bad = tmp_path / "bad.toml"
    bad.write_text("model = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml_config(bad)
