"""One Rego policy, compiled once, evaluated in-process (regopy, the OPA Rego binding).

A policy is upstream's kind: a module whose rule `valid` must be true for the call to go
on. Facts that shape this (regopy 1.5): `add_module` catches only syntax errors and
`build()` the rest, so a policy is built before it is used; a rule that is false with no
default reads as "undefined", so the query binds the value (`x = data.PKG.valid`) and
anything but `true` denies; an evaluation that fails answers not-ok, which denies too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from regopy import Bundle, Interpreter, RegoError

RULE = "valid"
_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*$", re.MULTILINE)


class PolicyError(ValueError):
    """A policy that cannot be used (no package, does not compile), with the engine's words."""


class EngineError(RuntimeError):
    """The engine could not evaluate a policy: the call is denied (fail closed)."""


@dataclass
class Policy:
    """A compiled policy: NAME (its file, for messages), the rule it asks for, its bundle."""

    name: str
    package: str
    bundle: Bundle

    @property
    def rule(self) -> str:
        return f"data.{self.package}.{RULE}"

    def allows(self, document: dict[str, Any] | str) -> bool:
        """Whether `valid` is true for input DOCUMENT (a dict, or its JSON); raises EngineError
        when the engine fails."""
        runner = Interpreter()
        give_input(runner, document)
        return self.allows_on(runner)

    def allows_on(self, runner: Interpreter) -> bool:
        """As `allows`, on an interpreter whose input is set already (several policies, one input)."""
        try:
            out = runner.query_bundle(self.bundle)
        except RegoError as exc:
            raise EngineError(f"policy {self.name} ({self.rule}) could not be evaluated: {_words(str(exc))}") from None
        if not out.ok():
            raise EngineError(f"policy {self.name} ({self.rule}) could not be evaluated (a runtime error, or "
                              "conflicting values of the rule)")  # fmt: skip
        if "bindings" not in str(out):  # undefined: neither true nor a default
            return False
        value = out.binding("x")
        return value is not None and value.json() == "true"


@dataclass
class PolicyGroup:
    """Several policies of one package each, built into one bundle and asked in one query
    (the engine's cost is mostly per query). NAMES in order; the query answers each `valid`."""

    names: list[str]
    bundle: Bundle

    def denied_on(self, runner: Interpreter) -> str | None:
        """The first policy whose `valid` is not true (None: all are), on RUNNER's input;
        raises EngineError when the engine fails."""
        try:
            out = runner.query_bundle(self.bundle)
        except RegoError as exc:
            raise EngineError(f"policies {', '.join(self.names)} could not be evaluated: {_words(str(exc))}") from None
        if not out.ok() or "bindings" not in str(out):
            raise EngineError(f"policies {', '.join(self.names)} could not be evaluated")
        answers = json.loads(out.binding("x").json())
        for name, answer in zip(self.names, answers, strict=True):
            if answer is not True:
                return name
        return None


def compile_group(sources: list[tuple[str, str]], helpers: Sequence[tuple[str, str]] = ()) -> PolicyGroup:
    """Build policies written as one package each (this project's defaults) into one bundle:
    each package is renamed apart, so their `valid` rules do not merge. HELPERS: modules
    they import, added as they are. Raises PolicyError."""
    modules = list(helpers)
    rules = []
    for i, (name, source) in enumerate(sources):
        renamed, count = _PACKAGE.subn(f"package policy_{i}", source, count=1)
        if not count:
            raise PolicyError(f"policy {name}: no `package` line")
        modules.append((name, renamed))
        rules.append(f"data.policy_{i}.{RULE}")
    bundle = _build(modules, f"x = [{', '.join(rules)}]", "policies do not compile")
    return PolicyGroup([name for name, _ in sources], bundle)


def give_input(runner: Interpreter, document: dict[str, Any] | str) -> None:
    """Set the input of RUNNER (JSON text is read by the engine itself: cheaper than a dict)."""
    try:
        if isinstance(document, str):
            runner.set_input_term(document)
        else:
            runner.set_input(document)
    except RegoError as exc:
        raise EngineError(f"the policy input could not be read: {_words(str(exc))}") from None


def compile_policy(name: str, source: str) -> Policy:
    """Build the policy in SOURCE (named NAME in messages); raises PolicyError with the
    engine's own message when it does not compile."""
    found = _PACKAGE.search(source)
    if found is None:
        raise PolicyError(f"policy {name}: no `package` line")
    package = found.group(1)
    bundle = _build([(name, source)], f"x = data.{package}.{RULE}", f"policy {name} does not compile")
    return Policy(name, package, bundle)


def _build(modules: Sequence[tuple[str, str]], query: str, what: str) -> Bundle:
    """One bundle of MODULES (name, source) answering QUERY; raises PolicyError (WHAT, then
    the engine's own report) when they do not compile."""
    builder = Interpreter()
    with _engine_output() as printed:
        try:
            for name, source in modules:
                builder.add_module(name, source)
            bundle = builder.build(query)
        except RegoError as exc:
            error: RegoError | None = exc
        else:
            error = None
    if error is not None or not bundle.ok():
        raise PolicyError(f"{what}: {_words(printed[0]) or _messages(error)}")
    return bundle


_compiling = threading.Lock()


@contextlib.contextmanager
def _engine_output() -> Iterator[list[str]]:
    """What the engine prints while compiling: it writes its readable error report (with
    file:line:column) to file descriptor 1 and raises only an AST dump. Logs go to stderr,
    and a compile is rare (start, reload), so stdout is lent to it for that moment."""
    printed = [""]
    with _compiling, tempfile.TemporaryFile() as capture:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            os.dup2(capture.fileno(), 1)
            yield printed
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            capture.seek(0)
            printed[0] = capture.read(64 * 1024).decode(errors="replace")


def _words(report: str) -> str:
    """The engine's report in one line: each error and where."""
    lines = [line.strip() for line in report.splitlines()]
    keep = [ln for ln in lines if ln and ln != "Errors:" and set(ln) != {"-"} and set(ln) != {"~"}]
    return " ".join(keep)[:800]


def _messages(exc: RegoError | None) -> str:
    """The messages inside the engine's AST dump (when it printed no report)."""
    if exc is None:
        return "the engine built no bundle"
    return "; ".join(re.findall(r"\(errormsg \d+:([^)]*)\)", str(exc))) or str(exc)[:400]
