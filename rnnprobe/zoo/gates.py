"""``--fail-if`` gates: a small expression language over summary keys, parsed, never eval'd.

Grammar (``or`` binds loosest, comparisons chain as in Python)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := operand (OP operand)+            OP: < <= > >= == !=
    operand    := KEY | NUMBER | STRING | true | false | inf

A KEY is a flattened summary key, ``schur.spectral_radius`` or
``lyapunov.exponents[0]``: its first part names the analysis. Strings (in
single or double quotes) compare with ``==`` and ``!=`` only.

A gate is evaluated per checkpoint over the summaries of all its analyses. It
*fails* for a checkpoint when the expression is true, and also when it cannot
be evaluated there (a key missing or null, e.g. a NaN, or a string compared
with ``<``): a CI gate must never pass because a value was absent.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from typing import Any, Callable, Mapping

from rnnprobe.errors import InputError

__all__ = ["Gate", "parse_gate", "GateOutcome"]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<key>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*)
      | (?P<string>'[^']*'|"[^"]*")
      | (?P<op><=|>=|==|!=|<|>)
      | (?P<paren>[()])
    )""",
    re.VERBOSE,
)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_WORDS = {"and", "or", "not"}
_CONSTANTS = {"true": True, "false": False, "inf": math.inf}


@dataclasses.dataclass(frozen=True)
class _Tok:
    kind: str  # number, key, string, op, paren, word, const, end
    text: str
    pos: int


@dataclasses.dataclass(frozen=True)
class _Const:
    value: Any


@dataclasses.dataclass(frozen=True)
class _Key:
    name: str


@dataclasses.dataclass(frozen=True)
class _Compare:
    operands: tuple
    ops: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Bool:
    op: str  # and, or, not
    args: tuple


class _Undecidable(Exception):
    """The gate cannot be evaluated for this checkpoint (missing value, type mismatch)."""


@dataclasses.dataclass(frozen=True)
class GateOutcome:
    """One gate on one checkpoint: ``failed`` and the values it saw, as ``key=value`` text."""

    failed: bool
    detail: str


class Gate:
    """A parsed ``--fail-if`` expression.

    ``Gate(text).evaluate(values)`` with ``values`` the flattened summary keys
    of one checkpoint returns a :class:`GateOutcome`; ``keys`` lists the keys
    the expression reads.
    """

    def __init__(self, text: str, *, option: str = "--fail-if"):
        self.text = text
        self._option = option
        self._toks = _tokenize(text, option)
        self._i = 0
        self._tree = self._expr()
        if self._peek().kind != "end":
            self._fail("expected 'and', 'or' or the end of the expression")
        self.keys: tuple[str, ...] = tuple(dict.fromkeys(_keys(self._tree)))

    # ---- parsing -----------------------------------------------------------------------------------------------
    def _peek(self) -> _Tok:
        return self._toks[self._i]

    def _next(self) -> _Tok:
        tok = self._toks[self._i]
        self._i += 1
        return tok

    def _fail(self, what: str) -> None:
        tok = self._peek()
        where = "at the end" if tok.kind == "end" else f"at column {tok.pos + 1} ({tok.text!r})"
        raise InputError(f"{self._option} {self.text!r}: {what} {where}; gates look like "
                         "'schur.spectral_radius > 1.05' or 'lyapunov.exponents[0] > 0 and not (x == 1)'")

    def _expr(self):
        args = [self._and()]
        while self._peek().kind == "word" and self._peek().text == "or":
            self._next()
            args.append(self._and())
        return args[0] if len(args) == 1 else _Bool("or", tuple(args))

    def _and(self):
        args = [self._not()]
        while self._peek().kind == "word" and self._peek().text == "and":
            self._next()
            args.append(self._not())
        return args[0] if len(args) == 1 else _Bool("and", tuple(args))

    def _not(self):
        tok = self._peek()
        if tok.kind == "word" and tok.text == "not":
            self._next()
            return _Bool("not", (self._not(),))
        if tok.kind == "paren" and tok.text == "(":
            self._next()
            inner = self._expr()
            if self._peek().text != ")":
                self._fail("expected ')'")
            self._next()
            return inner
        return self._comparison()

    def _operand(self):
        tok = self._peek()
        if tok.kind == "number":
            self._next()
            return _Const(float(tok.text))
        if tok.kind == "string":
            self._next()
            return _Const(tok.text[1:-1])
        if tok.kind == "const":
            self._next()
            return _Const(_CONSTANTS[tok.text])
        if tok.kind == "key":
            self._next()
            return _Key(tok.text)
        self._fail("expected a key, a number, a quoted string, true or false")

    def _comparison(self):
        operands = [self._operand()]
        ops = []
        while self._peek().kind == "op":
            ops.append(self._next().text)
            operands.append(self._operand())
        if not ops:
            self._fail("expected a comparison (< <= > >= == !=)")
        if all(isinstance(x, _Const) for x in operands):
            self._fail("compares constants only; name a summary key such as schur.spectral_radius")
        return _Compare(tuple(operands), tuple(ops))

    # ---- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, values: Mapping[str, Any]) -> GateOutcome:
        """Whether the gate fails for one checkpoint whose flattened summary keys are ``values``."""
        shown = ", ".join(f"{k}={_show(values.get(k, _MISSING))}" for k in self.keys)
        try:
            failed = bool(_truth(self._tree, values))
        except _Undecidable as e:
            return GateOutcome(True, f"{shown} ({e})")
        return GateOutcome(failed, shown)

    def __repr__(self) -> str:
        return f"Gate({self.text!r})"


_MISSING = object()


def _show(v: Any) -> str:
    if v is _MISSING:
        return "missing"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return repr(v) if isinstance(v, str) else str(v)


def _tokenize(text: str, option: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise InputError(f"{option} {text!r}: unexpected {text[pos]!r} at column {pos + 1}; gates use keys, "
                             "numbers, quoted strings, < <= > >= == !=, and, or, not and parentheses")
        kind = m.lastgroup
        start = m.start(kind)
        tok = m.group(kind)
        if kind == "key" and tok in _WORDS:
            kind = "word"
        elif kind == "key" and tok in _CONSTANTS:
            kind = "const"
        toks.append(_Tok(kind, tok, start))
        pos = m.end()
    toks.append(_Tok("end", "", len(text)))
    if len(toks) == 1:
        raise InputError(f"{option} is empty; give an expression such as 'schur.spectral_radius > 1.05'")
    return toks


def _keys(node) -> list[str]:
    if isinstance(node, _Key):
        return [node.name]
    if isinstance(node, _Compare):
        return [k for x in node.operands for k in _keys(x)]
    if isinstance(node, _Bool):
        return [k for x in node.args for k in _keys(x)]
    return []


def _value(node, values: Mapping[str, Any]) -> Any:
    if isinstance(node, _Const):
        return node.value
    v = values.get(node.name, _MISSING)
    if v is _MISSING:
        raise _Undecidable(f"{node.name} is missing")
    if v is None:
        raise _Undecidable(f"{node.name} is null")
    if isinstance(v, (list, dict)):
        raise _Undecidable(f"{node.name} is a {'list' if isinstance(v, list) else 'group'}; index it, e.g. "
                           f"{node.name}[0]")
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        v = float(v)
        if math.isnan(v):
            raise _Undecidable(f"{node.name} is NaN")
    return v


def _compare(op: str, a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        if op not in ("==", "!="):
            raise _Undecidable(f"cannot compare {_show(a)} {op} {_show(b)}")
        if not (isinstance(a, str) and isinstance(b, str)):
            return op == "!="
    return _OPS[op](a, b)


def _truth(node, values: Mapping[str, Any]) -> bool:
    if isinstance(node, _Bool):
        if node.op == "not":
            return not _truth(node.args[0], values)
        results = [_truth(a, values) for a in node.args]  # every key is read: missing ones always show
        return any(results) if node.op == "or" else all(results)
    vals = [_value(x, values) for x in node.operands]
    return all(_compare(op, vals[i], vals[i + 1]) for i, op in enumerate(node.ops))


def parse_gate(text: str, *, analyses: tuple[str, ...] | None = None, option: str = "--fail-if") -> Gate:
    """Parse ``text``; with ``analyses``, every key must start with one of them (InputError otherwise)."""
    gate = Gate(text, option=option)
    if analyses is not None:
        for key in gate.keys:
            head = re.split(r"[.\[]", key, maxsplit=1)[0]
            if head not in analyses or key == head:
                raise InputError(
                    f"{option} {text!r}: key {key!r} must start with the name of an analysis being run "
                    f"({', '.join(analyses)}), e.g. {analyses[0] if analyses else 'schur'}.<summary key>"
                )
    return gate
