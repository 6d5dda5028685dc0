"""Debian's real cloud kernel and busybox-static, fetched once per session into the cache."""

from __future__ import annotations

import pytest

from vlbr.guest.debian import PackageUnavailable, debian_busybox, debian_kernel


def _fetched(fetch, what: str) -> bytes:
    try:
        return fetch().read_bytes()
    except PackageUnavailable as err:
        pytest.skip(f"{what} cannot be fetched here: {err}")


@pytest.fixture(scope="session")
def debian_image() -> bytes:
    return _fetched(debian_kernel, "Debian's cloud kernel")


@pytest.fixture(scope="session")
def debian_busybox_bytes() -> bytes:
    return _fetched(debian_busybox, "busybox-static")
