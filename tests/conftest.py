"""Shared fixtures: `isa` runs a test under every CPU ISA variant this machine has (or only SPARSEOPS_ISA)."""
import os

import pytest

import sparseops


def _isas():
    forced = os.environ.get("SPARSEOPS_ISA")
    return [forced] if forced else sparseops.cpu_isas()


@pytest.fixture(params=_isas())
def isa(request):
    with sparseops.use_isa(request.param):
        yield request.param
