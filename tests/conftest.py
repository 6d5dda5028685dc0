"""Shared fixtures: the CPUID corpus in ../shared/corpus (see tests/corpus.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus import CORPUS, has_corpus


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not has_corpus():
        pytest.skip(f"CPUID corpus not found at {CORPUS}")
    return CORPUS
