"""Exception groups, as trio's nurseries raise them: the errors inside."""

from __future__ import annotations

from typing import Any


def leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """Every exception inside `group` and its nested groups, depth first, in order."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out += leaves(exc)
        else:
            out.append(exc)
    return out
