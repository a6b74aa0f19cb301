"""Bad input everywhere a user gives input: run-config values, CLI arguments, key files, ledger files, data files.

Property-based (hypothesis). Every case must end in a clear error and a non-zero exit — a
:class:`~shared.errors.FedrecError` (the console script prints one line, exits 2), a click usage error
(exit 2) or a reported violation (exit 1) — never another exception (a traceback), and never a
half-written output: the output path does not exist afterwards. CLI cases run in-process through
typer's runner (a subprocess per example would cost seconds); one subprocess test checks the console
script itself. gRPC requests are fuzzed in tests/test_reliability_serving.py.
"""

from __future__ import annotations

import json
import math
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedrec.cli import app
from shared.config import OLD_KEYS, RunConfig, parse_assignments
from shared.errors import ConfigError, FedrecError, KeyFileError
from shared.keys import generate_keys, load_key
from shared.ledger import SigningKey
from tests.support import REPO

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
NAME = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12)
JUNK = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


def invoke(args: list[str]) -> tuple[int, str]:
    """``fedrec ARGS`` in this process, with the console script's error handling: (exit code, output)."""
    result = CliRunner().invoke(app, args)
    exc = result.exception
    if isinstance(exc, FedrecError):
        return 2, str(exc)
    if exc is not None and not isinstance(exc, SystemExit):
        raise AssertionError(f"`fedrec {' '.join(args)}` ended in a traceback: {exc!r}") from exc
    return result.exit_code, result.output


def fails_cleanly(args: list[str], *outputs: Path) -> str:
    code, out = invoke(args)
    assert code != 0, f"`fedrec {' '.join(args)}` succeeded"
    for path in outputs:
        assert not path.exists(), f"`fedrec {' '.join(args)}` left {path} behind"
    return out


# ----------------------------------------------------------------------------- run-config values
def _not(parse, value: str) -> bool:
    try:
        parse(value)
    except ValueError:
        return True
    return False


def bad_values(key: str) -> st.SearchStrategy[str]:
    """Values that ``key`` must refuse (as typed on a command line)."""
    f = RunConfig.keys()[key][1]
    kind, meta = type(f.default), f.metadata
    if meta.get("choices"):
        return JUNK.filter(lambda v: v.strip().strip('"') not in meta["choices"])
    if kind is bool:
        return JUNK.filter(lambda v: v.strip().strip('"').lower() not in ("true", "false"))
    if key == "model.mlp-layers":
        return st.sampled_from(["", ",", "a", "0", "-1,2", "64,,x", "1.5"])
    out = [JUNK.filter(lambda v: _not(float, v.strip().strip('"')))]
    if kind is float:
        out.append(st.sampled_from(["nan", "inf", "-inf", "1e999"]))
    else:
        out.append(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()).map(repr))
    lo, hi, lo_open = meta.get("range", (None, None, False))
    if lo is not None:
        out.append(st.floats(min_value=-1e6, max_value=lo, exclude_max=not lo_open).map(lambda x: repr(
            math.floor(x) if kind is int else x)).filter(lambda v: float(v) < lo or (lo_open and float(v) == lo)))
    if hi is not None:
        out.append(st.floats(min_value=hi, max_value=1e6, exclude_min=True).map(
            lambda x: repr(math.ceil(x) + 1 if kind is int else x)))
    return st.one_of(out)


KNOWN_KEYS = frozenset(RunConfig.keys()) | frozenset(OLD_KEYS)  # old flat keys still load (deprecated)
CHECKED = sorted(k for k, (_, f) in RunConfig.keys().items() if f.metadata.get("choices")
                 or type(f.default) in (bool, int, float) or k == "model.mlp-layers")
BAD_ASSIGNMENT = st.one_of(
    st.sampled_from(CHECKED).flatmap(lambda k: bad_values(k).map(lambda v: f"{k}={v}")),
    NAME.filter(lambda k: k not in KNOWN_KEYS).map(lambda k: f"{k}=1"),  # unknown key
    JUNK.filter(lambda v: "=" not in v),  # not key=value
)
SMALL = ["--set", "train.epochs=1", "--set", "data.synthetic-users=30", "--set", "data.synthetic-items=60"]


@FUZZ
@given(assignment=BAD_ASSIGNMENT, command=st.sampled_from(["train", "simulate"]))
def test_bad_run_config_values_fail_cleanly_and_write_nothing(tmp_path_factory, assignment, command):
    with pytest.raises(ConfigError):  # the case really is bad (so no run starts)
        RunConfig.from_mapping(parse_assignments([assignment]))
    out = tmp_path_factory.mktemp("cfg") / "out"
    extra = ["--quiet"] if command == "simulate" else []
    message = fails_cleanly([command, "--out", str(out), *extra, *SMALL, "--set", assignment], out)
    assert "config" in message


@FUZZ
@given(content=st.binary(max_size=200))
def test_a_config_file_of_random_bytes_fails_cleanly(tmp_path_factory, content):
    tmp = tmp_path_factory.mktemp("cfgfile")
    (tmp / "c.toml").write_bytes(content)
    fails_cleanly(["train", "--config", str(tmp / "c.toml"), "--out", str(tmp / "out"), "--set", "train.epochs=0"],
                  tmp / "out")


# ----------------------------------------------------------------------------- CLI arguments
@pytest.fixture(scope="module")
def missing(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("missing")


def argv_cases(missing: Path) -> st.SearchStrategy[list[str]]:
    gone = NAME.map(lambda s: str(missing / "nope" / s))
    not_int = JUNK.filter(lambda v: _not(int, v))
    not_float = JUNK.filter(lambda v: _not(float, v))
    out = str(missing / "out")
    return st.one_of(
        st.tuples(st.just("audit"), gone),
        st.tuples(st.just("audit"), gone, st.just("--budget"), not_float),
        st.tuples(st.just("train"), st.just("--config"), gone, st.just("--out"), st.just(out)),
        st.tuples(st.just("simulate"), st.just("--preset"), NAME.filter(lambda n: n not in ("synthetic",
                  "ml100k-silos", "ml1m-silos", "ml1m-cross-device", "ml100k-cross-device")), st.just("--out"),
                  st.just(out)),
        st.tuples(st.just("simulate"), st.just("--resume"), gone),
        st.tuples(st.just("recommend"), st.just("--run"), gone, st.just("--out"), st.just(out + ".csv")),
        st.tuples(st.just("recommend"), st.just("--run"), gone, st.just("--out"), st.just(out + ".csv"),
                  st.just("--k"), not_int),
        st.tuples(st.just("data"), st.just("prepare"), gone, st.just("--keys"), gone, st.just("--out"), st.just(out)),
        st.tuples(st.just("data"), st.just("info"), gone),
        st.tuples(st.just("data"), st.just("reveal"), gone, st.just("--dataset"), gone, st.just("--keys"), gone,
                  st.just("--out"), st.just(out + ".csv")),
        st.tuples(st.just("serve"), st.just("--port"), st.one_of(st.integers(max_value=-1), st.integers(
            min_value=65536)).map(str)),
        st.tuples(st.sampled_from(["train", "simulate", "audit", "recommend", "serve", "data", "certs", "deploy"]),
                  NAME.map(lambda s: f"--no-such-option-{s}")),
    ).map(list)


@FUZZ
@given(data=st.data())
def test_bad_cli_arguments_fail_cleanly_and_write_nothing(missing, data):
    args = data.draw(argv_cases(missing))
    fails_cleanly(args, missing / "out", missing / "out.csv")


def test_keygen_with_a_missing_shared_item_key_writes_no_key_directory(tmp_path):
    fails_cleanly(["data", "keygen", "--out", str(tmp_path / "keys"), "--item-key-from", str(tmp_path / "no.key")],
                  tmp_path / "keys")


def test_the_console_script_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    for args in (["train", "--out", str(tmp_path / "o"), "--set", "train.lr=fast"], ["audit", str(tmp_path / "none")]):
        proc = subprocess.run([str(Path(sys.executable).parent / "fedrec"), *args], capture_output=True, text=True,
                              cwd=REPO, env=env, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- key files
@FUZZ
@given(content=st.one_of(st.binary(max_size=120), st.builds(
    lambda kind, hexpart: f"fedrec-key-v1 {kind} {hexpart}\n".encode(),
    st.sampled_from(["user", "item", "owner", "x"]), st.text("0123456789abcdefXYZ", max_size=70))),
    mode=st.sampled_from([0o600, 0o400, 0o640, 0o644, 0o604]), kind=st.sampled_from(["user", "item", "owner"]))
def test_key_files_of_random_content_or_permissions_give_a_key_file_error(tmp_path_factory, content, mode, kind):
    path = tmp_path_factory.mktemp("key") / "k.key"
    path.write_bytes(content)
    os.chmod(path, mode)
    try:
        value = load_key(path, kind)
    except KeyFileError as exc:
        assert str(path) in str(exc)
        return
    assert len(value) == 32 and mode & 0o077 == 0  # only a well-formed, private file loads


@FUZZ
@given(content=st.binary(max_size=300))
def test_signing_keys_of_random_bytes_give_a_key_file_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("sign") / "signing.key"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\n" + content if content[:1] == b"P" else content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError):
        SigningKey.load_or_create(path)


# ----------------------------------------------------------------------------- ledger files
def _audit_fails_cleanly(tmp: Path, text: bytes) -> int:
    ledger = tmp / "ledger.jsonl"
    ledger.write_bytes(text)
    code, _ = invoke(["audit", str(ledger), "--no-manifest", "--report", str(tmp / "report")])
    assert code in (1, 2)
    if code == 2:  # unreadable: no report at all
        assert not (tmp / "report.md").exists() and not (tmp / "report.png").exists()
    return code


@FUZZ
@given(lines=st.lists(st.one_of(st.binary(max_size=40), st.just(b"[1, 2]"), st.just(b'"x"'), st.just(b"{"),
                                st.just(b"{}")), min_size=1, max_size=5))
def test_audit_of_random_jsonl_exits_non_zero_without_a_traceback(tmp_path_factory, lines):
    _audit_fails_cleanly(tmp_path_factory.mktemp("ledger"), b"\n".join(lines))


LEDGER_FIELDS = ["version", "run_id", "round", "seq", "node_key_id", "public_key", "unit", "mechanism", "noise",
                 "noise_share", "noise_multiplier", "sample_rate", "steps", "clip_norm", "delta", "accountant",
                 "epsilon", "epsilon_budget", "prev_hash", "signature"]
VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False), JUNK)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate])
@given(entries=st.lists(st.dictionaries(st.sampled_from(LEDGER_FIELDS), VALUE), min_size=1, max_size=3))
def test_audit_of_forged_ledger_entries_reports_violations_without_a_traceback(tmp_path_factory, entries):
    tmp = tmp_path_factory.mktemp("forged")
    assume(entries)
    text = "".join(json.dumps(e) + "\n" for e in entries).encode()
    assert _audit_fails_cleanly(tmp, text) == 1


# ----------------------------------------------------------------------------- data files
@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("owner") / "keys"
    generate_keys(path)
    return path


ROW = st.tuples(st.one_of(st.integers(-3, 40).map(str), JUNK), st.one_of(st.integers(-3, 40).map(str), JUNK),
                st.one_of(st.floats(allow_nan=True).map(repr), JUNK), st.one_of(st.integers(-5, 2**40).map(str), JUNK))


@FUZZ
@given(rows=st.lists(ROW, max_size=30), header=st.booleans(), sep=st.sampled_from([",", "\t", ";"]))
def test_prepare_on_messy_logs_fails_cleanly_or_writes_a_complete_dataset(tmp_path_factory, keys, rows, header, sep):
    tmp = tmp_path_factory.mktemp("raw")
    lines = ([sep.join(["user", "item", "value", "timestamp"])] if header else []) + [sep.join(r) for r in rows]
    raw = tmp / "log.csv"
    raw.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = set(keys.rglob("*"))
    code, _ = invoke(["data", "prepare", str(raw), "--keys", str(keys), "--out", str(tmp / "ds")])
    if code == 0:
        assert (tmp / "ds" / "manifest.json").exists()
        return
    assert code == 2 and not (tmp / "ds").exists() and set(keys.rglob("*")) == before
