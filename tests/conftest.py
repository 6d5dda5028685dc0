"""Shared fixtures: the CPUID corpus in ../shared/corpus (see tests/corpus.py), and the
hypothesis profile CI runs with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI gates a landing: no timing-based failures on a busy machine, and the same examples every
# run so a failure reproduces. Locally, hypothesis explores afresh each run.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from corpus import CORPUS, has_corpus


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not has_corpus():
        pytest.skip(f"CPUID corpus not found at {CORPUS}")
    return CORPUS
