"""Shared fixtures: ``hal`` runs a test on both HALs (real threads, and the seeded sim)."""
import pytest

HALS = ["threads", "sim"]


@pytest.fixture(params=HALS)
def hal(request):
    return request.param
