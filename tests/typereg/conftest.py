"""The ``reg`` fixture of the ggmk.typereg tests: the registry of tests/fixtures/types/good.toml."""
from __future__ import annotations

import pytest

from ggmk.typereg import TypeRegistry, load_types

pytest.register_assert_rewrite("typereg_helpers")  # its asserts report like a test's

from typereg_helpers import GOOD  # noqa: E402


@pytest.fixture(scope="module")
def reg() -> TypeRegistry:
    return load_types(GOOD)
