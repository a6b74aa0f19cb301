"""The generated reference pages match the code; the docs site builds strictly."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from fedrec.docs import PAGES, ROOT, main, pages
from shared.config import RunConfig


def test_reference_pages_are_up_to_date():
    assert main(["--check"]) == 0, "run `python -m fedrec.docs`"


def test_every_config_key_and_command_is_documented():
    text = pages()
    for key, (_, f) in RunConfig.keys().items():
        assert f"| `{key}` |" in text["configuration"]
        assert f.metadata["help"], key
    for command in ("fedrec simulate", "fedrec audit", "fedrec data prepare", "fedrec serve", "fedrec certs create"):
        assert f"`{command}`" in text["cli"]
    assert all(p.is_relative_to(ROOT / "docs") for p in PAGES.values())


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed (the dev extra)")
def test_docs_build_strictly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
