import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import RunConfig, load_toml_config, parse_assignments
from shared.errors import ConfigError
from tests.conftest import REPO


def test_pyproject_defaults_equal_runconfig_defaults():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = RunConfig().to_flower_config()
    assert declared == {k: defaults[k] for k in declared}
    missing = sorted(set(defaults) - set(declared))
    assert not missing, f"run-config keys missing from [tool.flwr.app.config]: {missing}"


def test_values_are_coerced_from_strings():
    cfg = RunConfig.from_mapping({"lr": "0.01", "batch-size": "64", "full-rank": "false", "model": "gmf"})
    assert (cfg.lr, cfg.batch_size, cfg.full_rank, cfg.model) == (0.01, 64, False, "gmf")


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"lrr": 0.1}, "lrr"),
        ({"model": "svd"}, "model"),
        ({"lr": 0}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"batch-size": 1.5}, "batch-size"),
        ({"batch-size": True}, "batch-size"),
        ({"full-rank": "yes"}, "full-rank"),
        ({"mlp-layers": "64,,x"}, "mlp-layers"),
        ({"mlp-layers": "64,-2"}, "mlp-layers"),
        ({"lr": float("nan")}, "lr"),
    ],
)
def test_bad_values_name_the_key(mapping, key):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(mapping)
    assert err.value.key == key


@given(st.dictionaries(st.text(max_size=12), st.one_of(st.text(max_size=8), st.integers(), st.floats(),
                                                        st.booleans()), max_size=4))
def test_any_mapping_gives_a_config_or_a_config_error(mapping):
    try:
        cfg = RunConfig.from_mapping(mapping)
    except ConfigError:
        return
    assert isinstance(cfg, RunConfig)


def test_parse_assignments_and_toml(tmp_path):
    assert parse_assignments(["lr=0.1", "model = gmf"]) == {"lr": "0.1", "model": "gmf"}
    with pytest.raises(ConfigError):
        parse_assignments(["novalue"])
    good = tmp_path / "p.toml"
    good.write_text('model = "gmf"\nlr = 0.01\n')
    assert RunConfig.from_mapping(load_toml_config(good)).model == "gmf"
    bad = tmp_path / "bad.toml"
    bad.write_text("model = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml_config(bad)
