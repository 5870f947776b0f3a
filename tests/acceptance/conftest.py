import pytest

HALS = ["threads", "sim"]


@pytest.fixture(params=HALS)
def hal(request):
    return request.param
