"""Polynomial expansion pairs: a product of two linear factors -> its expansion.

`(7-3*z)*(-5*z-9)` -> `15*z**2-8*z-63`. The source varies its surface form (which
term of a factor comes first, coefficient 1 written as the bare variable, a zero
constant left out) while the target is sympy's expansion of the parsed source, so
the answer is checked by a computer algebra system rather than by hand-written
arithmetic, and its term order is sympy's canonical one (descending degree).
"""

from __future__ import annotations

import random
from typing import Iterator

from tdiag.config import PolynomialTaskConfig


def _linear(coefficient: int, variable: str) -> str:
    if coefficient == 1:
        return variable
    if coefficient == -1:
        return f"-{variable}"
    return f"{coefficient}*{variable}"


def _factor(rng: random.Random, variable: str, bound: int) -> str:
    """`(a*v+b)` with a != 0, so every product has degree 2; b = 0 is left out."""
    a = rng.randint(1, bound) * rng.choice((1, -1))
    b = rng.randint(-bound, bound)
    terms = [_linear(a, variable)]
    if b:
        terms.insert(rng.randrange(2), str(b))
    head, *tail = terms
    return "(" + head + "".join(t if t.startswith("-") else f"+{t}" for t in tail) + ")"


def expand(source: str, variable: str) -> str:
    """sympy's expansion of `source`, printed without spaces: the task's target."""
    import sympy  # half a second to import: only this dataset's stage pays it

    product = sympy.sympify(source, locals={variable: sympy.Symbol(variable)})
    return str(sympy.expand(product)).replace(" ", "")


def pairs(cfg: PolynomialTaskConfig, rng: random.Random) -> Iterator[tuple[str, str]]:
    """Endless (factored, expanded) pairs, a pure function of the rng's state."""
    while True:
        variable = rng.choice(cfg.variables)
        source = f"{_factor(rng, variable, cfg.max_coefficient)}*{_factor(rng, variable, cfg.max_coefficient)}"
        yield source, expand(source, variable)
