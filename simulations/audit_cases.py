"""The audit of an honest run and of each way a ledger can under-report a spend, as commands with their output.

    fedrec simulate --set federation.rounds=3 --set sim.node-state-dir=RUN/nodes --out RUN
    python -m simulations.audit_cases RUN [--work DIR]

Each case copies the run's ``federation_ledger.jsonl`` and ``manifest.jsonl`` into its own directory under
``--work``, tampers with them the way a node or an operator could, and runs ``fedrec audit`` on the copy, printing
the command, its exit status and its output. The forged entries are signed with the node's own key (from
``sim.node-state-dir``): what a dishonest node could produce.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from shared.ledger import SigningKey, entry_hash, read_jsonl, write_jsonl

LEDGER, MANIFEST = "federation_ledger.jsonl", "manifest.jsonl"


def _by_node(entries: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in entries:
        out.setdefault(e["node_key_id"], []).append(e)
    return out


def _node_key(run: Path, key_id: str) -> SigningKey:
    for path in sorted((run / "nodes").glob("*/signing.key")):
        key = SigningKey.load_or_create(path)
        if key.key_id == key_id:
            return key
    raise SystemExit(f"{run}/nodes: no signing key {key_id} (run fedrec simulate with sim.node-state-dir=RUN/nodes)")


def _forge(key: SigningKey, last: dict, **changes) -> dict:
    """A correctly signed entry that extends ``last``'s chain, with ``changes``."""
    body = {k: v for k, v in last.items() if k != "signature"}
    body.update(seq=last["seq"] + 1, prev_hash=entry_hash(last), **changes)
    return key.sign(body)


def cases(run: Path) -> dict[str, tuple[Callable[[list, list], tuple[list, list | None]], list[str]]]:
    entries = read_jsonl(run / LEDGER)
    nodes = list(_by_node(entries))
    first, second, third = nodes[0], nodes[1 % len(nodes)], nodes[2 % len(nodes)]

    def truncate(led, man):
        chain = [e for e in led if e["node_key_id"] == first]
        return [e for e in led if e not in chain[-2:]], man

    def drop(led, man):
        return [e for e in led if e["node_key_id"] != second], man

    def remove_middle(led, man):
        chain = [e for e in led if e["node_key_id"] == third]
        return [e for e in led if e is not chain[len(chain) // 2]], man

    def extra_round(led, man):
        chain = [e for e in led if e["node_key_id"] == third]
        last = chain[-1]
        forged = _forge(_node_key(run, third), last, round=last["round"] + 2, epsilon=last["epsilon"] * 1.1)
        return [*led, forged], man

    def other_run(led, man):
        chain = [e for e in led if e["node_key_id"] == first]
        forged = _forge(_node_key(run, first), chain[-1], run_id="0" * len(chain[-1]["run_id"]))
        return [*led, forged], man

    def edit_manifest(led, man):
        record = dict(man[1])
        record["entries"] = record["entries"][:-1]
        return led, [man[0], record, *man[2:]]

    keys = ["--node-keys", "node-keys.txt"]
    return {
        "honest run": (lambda led, man: (led, man), []),
        "the last two entries of one node deleted": (truncate, []),
        "every entry of one node deleted (--node-keys lists the registered nodes)": (drop, keys),
        "the middle entry of one node deleted": (remove_middle, []),
        "a correctly signed spend for a round the coordinator never ran": (extra_round, []),
        "a correctly signed entry of the same node key for another run": (other_run, []),
        "the manifest edited to acknowledge one entry fewer in its second record (round 1)": (edit_manifest, []),
        "no manifest beside the ledger": (lambda led, man: (led, None), []),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a DP run directory of `fedrec simulate`")
    parser.add_argument("--work", type=Path, default=None, help="where the tampered copies go (default: a temp dir)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="fedrec-audit-cases-"))
    ledger, manifest = read_jsonl(args.run / LEDGER), read_jsonl(args.run / MANIFEST)
    fedrec = str(Path(sys.executable).parent / "fedrec")
    for i, (title, (tamper, extra)) in enumerate(cases(args.run).items()):
        case = work / f"case-{i}"
        shutil.rmtree(case, ignore_errors=True)
        case.mkdir(parents=True)
        led, man = tamper(list(ledger), list(manifest))
        write_jsonl(case / LEDGER, led)
        if man is not None:
            write_jsonl(case / MANIFEST, man)
        (case / "node-keys.txt").write_text("".join(f"{k}\n" for k in _by_node(ledger)))
        command = ["audit", LEDGER, "--budget", "8", *extra]
        proc = subprocess.run([fedrec, *command], cwd=case, capture_output=True, text=True)
        print(f"# {title}\n$ fedrec {' '.join(command)}    # exit {proc.returncode}")
        print((proc.stdout + proc.stderr).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
