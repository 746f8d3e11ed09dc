"""OCS's ``@ocs_agent.param``: declare and check an operation's params."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class ParamError(Exception):
    """A param the operation cannot take; the text follows "Param error for"."""


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED = _Required()


@dataclass
class ParamSpec:
    key: str
    default: Any = REQUIRED
    type: type | None = None
    check: Callable[[Any], bool] | None = None
    cast: Callable[[Any], Any] | None = None
    choices: tuple | None = None

    def description(self) -> str:
        parts = []
        if self.type is not None:
            parts.append(self.type.__name__)
        if self.choices is not None:
            parts.append("one of " + ", ".join(repr(c) for c in self.choices))
        parts.append("required" if self.default is REQUIRED else f"default {self.default!r}")
        return "; ".join(parts)


_PARAMS = "_ocs_params"
_PARAMS_DONE = "_ocs_params_complete"


def param(
    key: str,
    default: Any = REQUIRED,
    type: type | None = None,
    check: Callable[[Any], bool] | None = None,
    cast: Callable[[Any], Any] | None = None,
    choices=None,
):
    """Declares param ``key`` of an operation, as OCS's ``ocs_agent.param``.

    ``@param('_')`` alone (OCS's idiom) declares that the operation takes no
    params. Once any is declared, a param that was not is refused.
    """

    def decorate(func):
        specs = getattr(func, _PARAMS, [])
        if key != "_":
            spec = ParamSpec(key, default, type, check, cast, tuple(choices) if choices else None)
            specs = [spec, *specs]
        setattr(func, _PARAMS, specs)
        setattr(func, _PARAMS_DONE, True)
        return func

    return decorate


def specs_of(func) -> list[ParamSpec] | None:
    """The declared params of ``func``, or None when it declares none."""
    if not getattr(func, _PARAMS_DONE, False):
        return None
    return list(getattr(func, _PARAMS, []))


def check_params(func, params: dict | None) -> dict:
    """The params ``func`` gets: defaults filled, types checked, casts applied."""
    params = dict(params or {})
    specs = specs_of(func)
    if specs is None:
        return params
    known = {spec.key for spec in specs}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ParamError(f"unexpected param(s): {', '.join(unknown)}")
    checked = {}
    for spec in specs:
        if spec.key not in params:
            if spec.default is REQUIRED:
                raise ParamError(f"required param {spec.key!r} is missing")
            checked[spec.key] = spec.default
            continue
        value = params[spec.key]
        if spec.cast is not None:
            # As OCS: the cast comes before the type check.
            try:
                value = spec.cast(value)
            except Exception as err:
                raise ParamError(f"param {spec.key!r}: cannot cast {value!r}: {err}") from err
        if spec.type is not None and value is not None:
            if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif not isinstance(value, spec.type) or (
                isinstance(value, bool) and spec.type is not bool
            ):
                raise ParamError(
                    f"param {spec.key!r} must be {spec.type.__name__}, "
                    f"not {type_name(value)} ({value!r})"
                )
        if spec.choices is not None and value not in spec.choices:
            raise ParamError(
                f"param {spec.key!r} must be one of {list(spec.choices)}, not {value!r}"
            )
        if spec.check is not None and not spec.check(value):
            raise ParamError(f"param {spec.key!r}={value!r} fails its check")
        checked[spec.key] = value
    return checked


def type_name(value: Any) -> str:
    return type(value).__name__
