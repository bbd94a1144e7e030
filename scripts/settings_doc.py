"""Print the README configuration table or .env.example from Settings' field docs.

python scripts/settings_doc.py table     # the README's configuration table
python scripts/settings_doc.py env       # the whole .env.example
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import SecretStr

from clara_voice.config import Settings

_OPTIONAL = "# "


def _default(field: Any) -> str | None:
    if field.default_factory is not None:
        value = field.default_factory()
        return json.dumps(value) if value != [] else None
    value = field.default
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if value is None:
        return None
    return str(value) if str(value) != "data" else "./data"


def table() -> str:
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = _default(field)
        shown = f"`{default}`" if default is not None and "\n" not in default else "—"
        if name == "instructions":
            shown = "Clara's prompt (see `config.py`)"
        rows.append(f"| `{Settings.env_name(name)}` | {shown} | {field.description} |")
    return "\n".join(rows)


def env() -> str:
    lines = [
        "# clara_voice configuration. Copy to .env and edit; the environment wins over this file.",
        "# LiveKit's and the providers' own variables keep their standard names; ours share",
        "# the CLARA_ prefix. Commented-out variables are optional.",
        "",
    ]
    for name, field in Settings.model_fields.items():
        default = _default(field)
        lines.append(f"# {field.description}")
        if default is None or name == "instructions":
            lines.append(f"{_OPTIONAL}{Settings.env_name(name)}=")
        else:
            lines.append(f"{Settings.env_name(name)}={default}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(table() if sys.argv[1:] == ["table"] else env(), end="")
