"""Polynomial pairs: sources are products of two linear factors, targets their sympy expansion."""

from __future__ import annotations

import itertools
import random
import re

import pytest
import sympy

from tdiag.config import PolynomialTaskConfig
from tdiag.data.polynomial import expand, pairs

CFG = PolynomialTaskConfig(variables="abcxyz", max_coefficient=9)
N = 300


def _draw(cfg: PolynomialTaskConfig, seed: int, n: int = N) -> list[tuple[str, str]]:
    return list(itertools.islice(pairs(cfg, random.Random(seed)), n))


@pytest.fixture(scope="module")
def sample() -> list[tuple[str, str]]:
    return _draw(CFG, seed=0)


def _variable(source: str) -> str:
    (letter,) = set(re.findall(r"[a-z]", source))
    return letter


def test_the_documented_example():
    assert expand("(7-3*z)*(-5*z-9)", "z") == "15*z**2-8*z-63"


def test_target_is_the_sympy_expansion_of_the_source(sample):
    for source, target in sample:
        v = sympy.Symbol(_variable(source))
        product = sympy.sympify(source, locals={v.name: v})
        expanded = sympy.expand(product)
        assert expanded == sympy.sympify(target, locals={v.name: v}), source
        assert target == str(expanded).replace(" ", ""), source
        assert sympy.degree(expanded, v) == 2, source


def test_sources_are_two_bounded_linear_factors(sample):
    for source, _ in sample:
        assert set(re.findall(r"[a-z]", source)) <= set(CFG.variables), source
        v = sympy.Symbol(_variable(source))
        match = re.fullmatch(r"\(([^()]+)\)\*\(([^()]+)\)", source)
        assert match, source
        for factor in match.groups():
            poly = sympy.Poly(sympy.sympify(factor, locals={v.name: v}), v)
            assert poly.degree() == 1, source
            assert all(abs(c) <= CFG.max_coefficient for c in poly.all_coeffs()), source


def test_surface_forms_vary(sample):
    sources = "".join(s for s, _ in sample)
    assert re.search(r"\(-?\d+[+-]", sources)  # constant term first
    assert re.search(r"[a-z][+-]\d+\)", sources)  # linear term first
    assert re.search(r"[(+-][a-z]", sources)  # coefficient 1 written as the bare variable
    assert re.search(r"\(-?\d*\*?[a-z]\)", sources)  # a zero constant left out


def test_several_variables_occur(sample):
    assert len({_variable(s) for s, _ in sample}) >= 4


def test_same_seed_same_pairs_other_seed_other_pairs():
    assert _draw(CFG, seed=3, n=50) == _draw(CFG, seed=3, n=50)
    assert _draw(CFG, seed=3, n=50) != _draw(CFG, seed=4, n=50)


def test_small_coefficient_bound_is_respected():
    cfg = PolynomialTaskConfig(variables="q", max_coefficient=1)
    for source, _ in _draw(cfg, seed=1, n=100):
        assert set(re.findall(r"\d+", source)) <= {"1"}, source
