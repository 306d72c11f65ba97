"""Whether a value is of a type hint: a record's field read back from JSON, or a peft config's field given by name."""

from __future__ import annotations

import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any


def check_fields(record: Any, where: str = "") -> None:
    """Raise TypeError naming the first field of record (a dataclass, nested ones included) whose value is not of its
    declared type."""
    hints = typing.get_type_hints(type(record))
    for item in fields(record):
        check_value(getattr(record, item.name), hints[item.name], f"{where}{item.name}")


def check_value(value: Any, hint: Any, where: str) -> None:
    """Raise TypeError naming where (and what was found) unless value is of hint: Any, None, int, float, str, bool,
    Literal, unions, lists, tuples, dicts and dataclasses. JSON's true and false are not numbers; an int is a float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return
    if origin in (typing.Union, types.UnionType):
        options = [option for option in args if not (value is not None and option is type(None))]
        for option in options[:-1]:
            try:
                return check_value(value, option, where)
            except TypeError:
                continue
        return check_value(value, options[-1], where)  # its message names what is wrong inside the value
    if origin is typing.Literal and any(_literal(value, arg) for arg in args):
        return
    if is_dataclass(hint) and isinstance(value, hint):
        return check_fields(value, f"{where}.")
    if origin in (list, tuple) and isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_value(item, args[0] if args else Any, f"{where}[{index}]")
        return
    if origin is dict and isinstance(value, dict):
        for key, item in value.items():
            check_value(key, args[0], f"{where} key")
            check_value(item, args[1], f"{where}[{key!r}]")
        return
    if _plain(value, hint):
        return
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise TypeError(f"{where} is {shown}, not {describe(hint)}")


def describe(hint: Any) -> str:
    """A type hint as a reader would write it: int, list[str] | None, one of 'gaussian', 'pissa'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(describe(arg) for arg in args)}]"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _literal(value: Any, arg: Any) -> bool:
    """value is the literal arg; an arg that describes a family of strings ('pissa_niter_[number of iters]', as
    peft spells one) takes any string with its prefix."""
    if isinstance(arg, str) and "[" in arg:
        return isinstance(value, str) and value.startswith(arg.split("[")[0]) and value != arg.split("[")[0]
    return value == arg and type(value) is type(arg)


def _plain(value: Any, hint: Any) -> bool:
    """Whether value is of a plain type hint (a class)."""
    if not isinstance(hint, type):
        return False
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if hint is float else hint)
