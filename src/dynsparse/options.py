"""Options declared once.

Every option of a configuration dataclass (``CollectConfig``, ``AnalyzeOptions``, ...) is a field
made with :func:`option`: its default, its help text and its check live there and nowhere else.
:func:`validate` runs every field's check (then the class's cross-field ``_cross_check``, if it
has one); :func:`add_argument` builds a command-line flag from a field (type from the check, help
and ``(default ...)`` from the field) and :func:`from_args` builds the dataclass from the flags
the user gave, so a default left out on the command line is the dataclass's own.

Every refusal reads ``LABEL VALUE is not allowed; allowed: WHAT`` (``LABEL`` is the flag without
its dashes), on the command line and through the API alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from typing import Any, Callable, Sequence

from dynsparse import errors

#: metadata keys of an option field
HELP, CHECK, FLAG = "help", "check", "flag"


def _same(value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True)
class Check:
    """What values an option allows.

    Attributes:
      allowed: the allowed values in words (``an integer > 0``), quoted in every refusal.
      accept: True for an allowed value (a TypeError or ValueError counts as False).
      convert: the stored form of an accepted value (``int``, a tuple, ...).
      parse: command-line text -> value (raises ValueError); ``None``: the text itself.
    """

    allowed: str
    accept: Callable[[Any], bool]
    convert: Callable[[Any], Any] = _same
    parse: Callable[[str], Any] | None = None

    def __call__(self, label: str, value: Any) -> Any:
        """``value`` converted, or ``UserError``: ``LABEL VALUE is not allowed; allowed: ...``."""
        try:
            ok = bool(self.accept(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise errors.UserError(f"{label} {value!r} is not allowed; allowed: {self.allowed}")
        return self.convert(value)

    def from_text(self, text: str) -> Any:
        """argparse ``type``: the value of a command-line word, or ``ArgumentTypeError`` in the same words."""
        try:
            value = text if self.parse is None else self.parse(text)
            return self("", value)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: {self.allowed}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int | None = None, maximum: int | None = None, allowed: str | None = None) -> Check:
    """An integer in ``[minimum, maximum]`` (either bound may be open)."""
    if allowed is None:
        allowed = "an integer" + ("" if minimum is None else " > 0" if minimum == 1 else f" >= {minimum}")
    return Check(
        allowed,
        lambda v: _is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum),
        int, int,
    )


def number(above: float | None = 0.0, below: float | None = None, allowed: str | None = None) -> Check:
    """A finite number strictly between ``above`` and ``below`` (either bound may be open)."""
    if allowed is None:
        if above is not None and below is not None:
            allowed = f"a number in ({above:g}, {below:g})"
        else:
            allowed = "a finite number" + ("" if above is None else f" > {above:g}")
    return Check(
        allowed,
        lambda v: _is_real(v) and (above is None or v > above) and (below is None or v < below),
        float, float,
    )


def integers(minimum: int = 0) -> Check:
    """A non-empty sequence of integers >= ``minimum`` (stored as a tuple; comma-separated on the command line)."""
    return Check(
        f"integers >= {minimum}, comma-separated (e.g. 1,2,5)",
        lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_int(k) and k >= minimum for k in v),
        lambda v: tuple(int(k) for k in v),
        lambda text: tuple(int(k) for k in text.split(",") if k.strip()),
    )


def boolean() -> Check:
    """True or False (a flag on the command line)."""
    return Check("true or false", lambda v: isinstance(v, bool))


def one_of(*values: str) -> Check:
    """One of the listed words."""
    return Check(", ".join(values), lambda v: v in values)


def widths(empty: bool = False) -> Check:
    """Layer widths: integers > 0, comma-separated on the command line (``32,32``)."""

    def accept(v: Any) -> bool:
        return isinstance(v, (tuple, list)) and (empty or len(v) > 0) and all(_is_int(w) and w > 0 for w in v)

    def parse(text: str) -> tuple[int, ...]:
        return tuple(int(w) for w in text.split(",") if w.strip())

    return Check("integers > 0, comma-separated (e.g. 32,32)", accept, lambda v: tuple(int(w) for w in v), parse)


def optional(check: Check) -> Check:
    """``check``, or None."""
    return Check(check.allowed + " (or none)", lambda v: v is None or check.accept(v),
                 lambda v: None if v is None else check.convert(v), check.parse)


def seed() -> Check:
    """A seed: an integer in 0 .. 2**32 - 1 (numpy's SeedSequence and JAX's PRNGKey both take it)."""
    return integer(0, errors.MAX_SEED, "an integer in 0 .. 2**32 - 1")


def via(fn: Callable[[Any], Any], allowed: str, parse: Callable[[str], Any] | None = None) -> Check:
    """A check owned by the module that knows the domain: ``fn(value)`` returns the stored value
    (None: the value as given) or raises ``UserError`` (with its own message, kept as it is)."""
    return _Via(allowed, lambda v: True, _same, parse, fn)


@dataclasses.dataclass(frozen=True)
class _Via(Check):
    fn: Callable[[Any], Any] = _same

    def __call__(self, label: str, value: Any) -> Any:
        try:
            stored = self.fn(value)
        except errors.UserError:
            raise
        except (TypeError, ValueError):
            raise errors.UserError(f"{label} {value!r} is not allowed; allowed: {self.allowed}") from None
        return value if stored is None else stored

    def from_text(self, text: str) -> Any:
        try:
            return self("", text if self.parse is None else self.parse(text))
        except errors.UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: {self.allowed}") from None


def option(default: Any = dataclasses.MISSING, *, help: str, check: Check | None = None, flag: str | None = None,
           factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field that carries its help text and check.

    Args:
      default: the default (or ``factory`` for a mutable one; neither: required).
      help: one sentence for ``--help`` (the default is appended by ``add_argument``).
      check: the values allowed; None: any (a cross-field check may still refuse it).
      flag: the option's name in messages and on the command line when it is not the field's
        name with dashes (``--noise-beta`` for ``beta``).
    """
    metadata = {HELP: help, CHECK: check, FLAG: flag}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def label(field: dataclasses.Field) -> str:
    """The option's name in messages: its flag without dashes, else the field name with dashes."""
    flag = field.metadata.get(FLAG)
    return flag.lstrip("-") if flag else field.name.replace("_", "-")


def field_of(cls: type, name: str) -> dataclasses.Field:
    """The dataclass field ``name`` of ``cls`` (KeyError if there is none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no option {name!r}")


def default(cls: type, name: str) -> Any:
    """The declared default of option ``name`` of ``cls`` (a fresh one for a factory)."""
    f = field_of(cls, name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise KeyError(f"{cls.__name__}.{name} has no default")


def validate(obj: Any) -> Any:
    """Run every field's check, then ``obj._cross_check()`` if the class defines one.

    Returns:
      ``obj`` with every value in its stored form (a new instance where one changed).

    Raises:
      UserError: the first bad value, named, with what is allowed.
    """
    changes = {}
    for f in dataclasses.fields(obj):
        check = f.metadata.get(CHECK)
        if check is None:
            continue
        value = getattr(obj, f.name)
        stored = check(label(f), value)
        if stored is not value:
            changes[f.name] = stored
    if changes:
        obj = dataclasses.replace(obj, **changes)
    cross = getattr(obj, "_cross_check", None)
    return obj if cross is None else cross()


def add_argument(parser: argparse.ArgumentParser, cls: type, name: str, *aliases: str, flag: str | None = None,
                 const: Any = dataclasses.MISSING, help: str | None = None, **kw: Any) -> argparse.Action:
    """A command-line flag for option ``name`` of ``cls``.

    The flag's value is None when the user leaves it out (``from_args`` then leaves the field to
    its dataclass default); its type is the option's check; its help is the option's, with the
    default appended.

    Args:
      flag: the flag (default: the field's ``flag``, else ``--name-with-dashes``).
      const: make it a switch storing ``const`` (``--relative`` stores ``kind="relative"``);
        a boolean option defaulting to False is a switch storing True without it.
      help: replaces the option's help text (the default is still appended).
      kw: more ``add_argument`` keywords (``metavar``, ...).
    """
    f = field_of(cls, name)
    flag = flag or f.metadata.get(FLAG) or "--" + name.replace("_", "-")
    text = help or f.metadata[HELP]
    try:
        value = default(cls, name)
    except KeyError:
        value = dataclasses.MISSING
    if value is not dataclasses.MISSING and value is not None and const is dataclasses.MISSING and value is not False:
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        text += f" (default {shown})"
    if const is dataclasses.MISSING and value is False:
        const = True
    if const is not dataclasses.MISSING:
        return parser.add_argument(flag, *aliases, dest=name, action="store_const", const=const, default=None, help=text, **kw)
    check = f.metadata.get(CHECK)
    kind = None if check is None else check.from_text
    return parser.add_argument(flag, *aliases, dest=name, type=kind, default=None, help=text, **kw)


def add_parameter(parser: argparse.ArgumentParser, fn: Callable[..., Any], name: str, *aliases: str, help: str,
                  check: Check | None = None, flag: str | None = None, **kw: Any) -> argparse.Action:
    """A command-line flag for keyword ``name`` of function ``fn`` (a preset's knob): the default
    shown in the help is the function's own; the flag's value is None when it is left out."""
    import inspect

    value = inspect.signature(fn).parameters[name].default
    text = help if value is None or value is inspect.Parameter.empty else f"{help} (default {value})"
    flag = flag or "--" + name.replace("_", "-")
    kind = None if check is None else check.from_text
    return parser.add_argument(flag, *aliases, dest=name, type=kind, default=None, help=text, **kw)


def given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``cls`` that the user gave on the command line (flags from ``add_argument``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def from_args(cls: type, args: argparse.Namespace, base: Any = None, **fixed: Any) -> Any:
    """``cls`` (or ``base`` with changes) from the given flags and ``fixed`` values (not validated)."""
    values = {**given(cls, args), **fixed}
    return cls(**values) if base is None else dataclasses.replace(base, **values)


def help_of(cls: type, names: Sequence[str] | None = None) -> dict[str, str]:
    """``{option: help}`` of ``cls`` (for documentation tables)."""
    return {f.name: f.metadata.get(HELP, "") for f in dataclasses.fields(cls) if names is None or f.name in names}
