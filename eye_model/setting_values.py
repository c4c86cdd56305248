"""Parsers of setting values: each names the setting and the fix in its error.

:mod:`eye_model.settings` declares the variables and uses these; they know no names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """An environment variable holds a value eye-model cannot use (names it and the fix)."""


def parse_bool(value: str | bool | None, *, name: str = "value", default: bool = False) -> bool:
    """Parse a boolean setting the way users write them in shells.

    Args:
        value: "true"/"false", "1"/"0", "yes"/"no", "on"/"off" (any case), a bool or None.
        name: the setting's name, used in the error message.
        default: returned when ``value`` is None.

    Returns:
        The boolean value.

    Raises:
        SettingsError: for anything else, naming the setting and the accepted values.
    """
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SettingsError(f"{name}={value!r} is not a boolean; set it to true or false")


def _parse_number(
    value: str | float | None,
    *,
    name: str,
    default: float,
    kind: type[int] | type[float],
    minimum: float,
    inclusive: bool,
) -> Any:
    """Parse a number of ``kind`` (int or float) at or above (or above) ``minimum``."""
    if value is None or str(value).strip() == "":
        return default
    what = "a whole number" if kind is int else "a number"
    bound = f"{'at least' if inclusive else 'above'} {minimum:g}"
    try:
        number = kind(str(value).strip())
    except ValueError:
        raise SettingsError(
            f"{name}={value!r} is not {what}; set it to {what} {bound} "
            f"(default {default:g}) or unset it"
        ) from None
    too_small = number < minimum if inclusive else not number > minimum
    if too_small or number == float("inf"):
        raise SettingsError(f"{name}={value!r} must be {bound}; the default is {default:g}")
    return number


def parse_positive_int(value: str | int | None, *, name: str, default: int) -> int:
    """Parse a positive whole number, naming the setting in the error."""
    number: int = _parse_number(
        value, name=name, default=default, kind=int, minimum=0, inclusive=False
    )
    return number


def parse_non_negative_int(value: str | int | None, *, name: str, default: int) -> int:
    """Parse a whole number that may be 0 (0 usually means "automatic")."""
    number: int = _parse_number(
        value, name=name, default=default, kind=int, minimum=0, inclusive=True
    )
    return number


def parse_positive_float(
    value: str | float | None, *, name: str, default: float, allow_zero: bool = False
) -> float:
    """Parse a positive (or, with ``allow_zero``, non-negative) finite number, such as seconds."""
    number: float = _parse_number(
        value, name=name, default=default, kind=float, minimum=0.0, inclusive=allow_zero
    )
    return number


def parse_choice(value: str | None, *, name: str, default: str, choices: tuple[str, ...]) -> str:
    """Parse one of a fixed list of words (any case), naming the setting and the list."""
    if value is None or str(value).strip() == "":
        return default
    text = str(value).strip()
    for choice in choices:
        if text.lower() == choice.lower():
            return choice
    raise SettingsError(f"{name}={value!r} is not one of {', '.join(choices)}")


# Parsers with their setting's name and default bound, for eye_model.settings.ENVIRONMENT.


def text_parser(default: str = "") -> Callable[[str | None], str]:
    """Text, stripped; ``default`` when unset or blank."""
    return lambda value: (value or "").strip() or default


def bool_parser(name: str, default: bool) -> Callable[[str | None], bool]:
    """:func:`parse_bool` for the setting ``name``."""
    return lambda value: parse_bool(value, name=name, default=default)


def int_parser(name: str, default: int) -> Callable[[str | None], int]:
    """:func:`parse_positive_int` for the setting ``name``."""
    return lambda value: parse_positive_int(value, name=name, default=default)


def seconds_parser(name: str, default: float) -> Callable[[str | None], float]:
    """:func:`parse_positive_float` for the setting ``name``."""
    return lambda value: parse_positive_float(value, name=name, default=default)


def choice_parser(name: str, default: str, choices: tuple[str, ...]) -> Callable[[str | None], str]:
    """:func:`parse_choice` for the setting ``name``."""
    return lambda value: parse_choice(value, name=name, default=default, choices=choices)
