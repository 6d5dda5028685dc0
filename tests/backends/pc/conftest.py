"""Debian's real cloud kernel, fetched once per session into the cache (issue 11)."""

from __future__ import annotations

import pytest

from vlbr.guest.debian import PackageUnavailable, debian_kernel


@pytest.fixture(scope="session")
def debian_image() -> bytes:
    try:
        return debian_kernel().read_bytes()
    except PackageUnavailable as err:
        pytest.skip(f"Debian's cloud kernel cannot be fetched here: {err}")
