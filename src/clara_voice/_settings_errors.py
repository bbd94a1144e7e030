"""What an invalid setting looks like to the person who set it: one line per variable.

:func:`describe` turns pydantic's validation errors into lines naming the environment
variable, the value given (left out when it may be a secret) and what is wrong with it;
:class:`SettingsError` carries them to the command line, which prints them and exits 2.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from pydantic import ValidationError

from clara_voice._redact import redact, redact_loose

_PLAIN_FIELDS = frozenset(
    {"provider", "model", "language", "voice", "response_format", "temperature", "base_url"}
)


class SettingsError(Exception):
    """Raised by ``load_settings``; ``str()`` is one line per invalid variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def describe(
    exc: ValidationError, env_names: Mapping[str, str], *, secret: Collection[str] = ()
) -> list[str]:
    """One line per invalid variable: its name, the value given (unless it may be secret)
    and what is wrong. ``env_names`` maps each field to its variable; the values of the
    ``secret`` fields are never shown."""
    env_for_loc = dict(env_names)
    env_for_loc.update({env: env for env in env_for_loc.values()})
    secret_keys = {*secret, *(env_names[name] for name in secret if name in env_names)}
    problems = []
    for error in exc.errors(include_url=False):
        if not error["loc"]:  # a check across settings: its message names the variables
            problems.append(f"invalid settings: {error['msg'].removeprefix('Value error, ')}")
            continue
        key = str(error["loc"][0])
        variable = env_for_loc.get(key, key.upper())
        variable += "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"][1:]
        )
        message = error["msg"].removeprefix("Value error, ")
        given = error.get("input")
        hidden = (
            isinstance(given, (dict, list))
            or key in secret_keys
            or any(word in variable.lower() for word in ("secret", "key", "token"))
            # inside a list setting, only the fields known to hold no secret are shown
            or (len(error["loc"]) > 1 and error["loc"][-1] not in _PLAIN_FIELDS)
        )
        shown = "" if hidden else f"={redact_loose(repr(given))}"
        problems.append(f"invalid setting {variable}{shown}: {message}")
    return problems


def describe_unparsable(exc: Exception, env_names: Mapping[str, str]) -> list[str]:
    """The line for a value the settings source could not even parse (a list or object
    setting that is not JSON); the value is not shown, it may hold keys."""
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else ""
    variable = env_names.get(field, field.upper() or "a setting")
    cause = exc.__cause__
    why = f"not valid JSON ({cause})" if isinstance(cause, ValueError) else str(exc)
    return [f"invalid setting {variable}: {redact(why)}"]


__all__ = ["SettingsError", "describe", "describe_unparsable"]
