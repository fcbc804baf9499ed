"""Settings stated once: a pydantic model whose fields carry their flag and environment name.

A field annotated with an `Option` is a setting: `build_parser` makes its flag
(its help naming the environment variable and the default), `parse` reads the
command line, then the environment, then the model's default, and validates
the lot with the model; `flag_table` writes the README's table from the same
fields. A value given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from nsm_common.urls import split_list

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Option:
    """How one model field is given: `env` names its variable, `help` says what it means."""

    env: str
    help: str = ""
    flag: str = ""  # default: --field-name
    metavar: str | None = None
    repeat: bool = False  # a list: the flag repeated (or comma lists), the variable a comma list
    comma: bool = False  # a list given as one comma-separated value, flag and variable alike
    default_text: str = ""  # how the default reads where its value says little (a host name)

    def flag_of(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


def options(model: type[BaseModel]) -> list[tuple[str, FieldInfo, Option]]:
    """The model's settings in declaration order: (field name, field, option)."""
    out = []
    for name, field in model.model_fields.items():
        option = next((m for m in field.metadata if isinstance(m, Option)), None)
        if option is not None:
            out.append((name, field, option))
    return out


def _text(value: object) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value)
    return str(value)


def _default(field: FieldInfo) -> Any:
    return field.get_default(call_default_factory=True)


def _shown(field: FieldInfo, option: Option) -> str:
    if option.default_text:
        return option.default_text
    value = _default(field)
    if value in (None, "", [], ()):
        return ""
    return _text(value)


def truthy(text: str | None) -> bool:
    """A switch's environment variable: 1, true, yes or on (any case) is set."""
    return (text or "").strip().lower() in ("1", "true", "yes", "on")


def build_parser(model: type[BaseModel], prog: str, description: str) -> argparse.ArgumentParser:
    """The program's flags; a flag's default is its variable when set, else the model's."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for name, field, option in options(model):
        env = os.environ.get(option.env)
        shown = _shown(field, option)
        where = f"env {option.env}" + (f"; default {shown}" if shown else "")
        text = f"{option.help} ({where})" if option.help else where
        flag = option.flag_of(name)
        if option.repeat:
            parser.add_argument(flag, dest=name, action="append", metavar=option.metavar, help=text + "; repeatable")
            continue
        default = _default(field)
        if isinstance(default, bool):
            on = truthy(env) if env is not None else default
            parser.add_argument(flag, dest=name, action="store_true", default=on, help=text)
            continue
        if option.comma:
            given = env if env is not None else _text(default)
            parser.add_argument(flag, dest=name, default=given, metavar=option.metavar, help=text)
            continue
        kind: type[Any] = type(default) if isinstance(default, int | float) and not isinstance(default, bool) else str
        value: Any = env if env is not None or default is None else (default if kind is not str else _text(default))
        parser.add_argument(flag, dest=name, type=kind, default=value, metavar=option.metavar, help=text)
    return parser


def parse(model: type[M], parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> M:
    """The validated settings; a bad value exits (status 2) naming its flag and variable."""
    args = parser.parse_args(argv)
    data: dict[str, Any] = {}
    for name, _, option in options(model):
        value = getattr(args, name)
        if option.repeat:
            listed = split_list(value) or split_list(os.environ.get(option.env))
            if listed:
                data[name] = listed
        elif option.comma:
            data[name] = split_list(value)
        else:
            data[name] = value
    try:
        return model(**data)
    except ValidationError as exc:
        _fail(parser, model, exc)


def _fail(parser: argparse.ArgumentParser, model: type[BaseModel], exc: ValidationError) -> NoReturn:
    flags = {name: (option.flag_of(name), option.env) for name, _, option in options(model)}
    problems = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        flag, env = flags.get(field, (field, ""))
        where = f"{flag} (env {env})" if env else flag or "settings"
        problems.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
    parser.error("; ".join(problems))


def flag_table(model: type[BaseModel]) -> str:
    """The README's table of the model's flags, variables, meanings and defaults (markdown)."""
    rows = ["| flag | environment | meaning |", "|---|---|---|"]
    for name, field, option in options(model):
        flag = f"`{option.flag_of(name)}" + (f" {option.metavar}`" if option.metavar else "`")
        env = f"`{option.env}`"
        if option.repeat:
            flag += " (repeatable)"
            env += " (comma list)"
        elif option.comma:
            env += " (comma list)"
        shown = _shown(field, option)
        if option.default_text:
            meaning = f"{option.help} (default: {shown})"
        else:
            meaning = option.help + (f" (default `{shown}`)" if shown else "")
        rows.append(f"| {flag} | {env} | {meaning} |")
    return "\n".join(rows) + "\n"
