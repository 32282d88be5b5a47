# Copyright: gpufleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The to_toml filter: a value as a TOML value (string, integer, float, boolean, array, inline table).

to_json is not TOML: JSON leaves DEL (U+007F) raw, which TOML forbids in a string, and
escapes a character beyond U+FFFF as a surrogate pair, which TOML refuses.
"""

from __future__ import annotations

import math
import re

from ansible.errors import AnsibleFilterError

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(text):
    out = []
    for char in text:
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append("\\u%04X" % ord(char))
        else:
            out.append(char)  # any other character, astral ones too, is written as itself (UTF-8)
    return '"' + "".join(out) + '"'


def to_toml(value):
    """The TOML text of value, for the right-hand side of `key = ...`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(str(value))  # str() drops Ansible's tagged/unsafe string types
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            key = str(key)
            items.append("%s = %s" % (key if _BARE_KEY.match(key) else _string(key), to_toml(item)))
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if value is None:
        raise AnsibleFilterError("to_toml: TOML has no null; leave the key out instead")
    raise AnsibleFilterError("to_toml: cannot write a %s as TOML" % type(value).__name__)


class FilterModule:
    def filters(self):
        return {"to_toml": to_toml}
