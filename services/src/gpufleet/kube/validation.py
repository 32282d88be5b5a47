"""Kubernetes' own input rules, checked before any request so bad input gets one clear line.

The rules and their wording are apimachinery's (k8s.io/apimachinery/pkg/util/validation):
a node name is a DNS subdomain (RFC 1123, ≤ 253), a taint or label key a
qualified name (optional DNS-subdomain prefix + "/" + a name part ≤ 63), a
taint or label value ≤ 63 characters of the label-value pattern, a taint
effect one of NoSchedule, PreferNoSchedule, NoExecute.
"""

from __future__ import annotations

import re

DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + r"(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
NAME_PART = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE = "(" + NAME_PART + ")?"
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

SUBDOMAIN_RULE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                  "'.', and must start and end with an alphanumeric character (e.g. 'example.com')")
NAME_PART_RULE = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                  "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc')")
LABEL_VALUE_RULE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
                    "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
                    "'my_value',  or '12345')")


class InvalidInput(ValueError):
    """Input a Kubernetes API server would refuse (422); the message says which rule."""


def dns_subdomain_errors(value: str) -> list[str]:
    errors = []
    if len(value) > 253:
        errors.append("must be no more than 253 characters")
    if not re.fullmatch(DNS1123_SUBDOMAIN, value):
        errors.append(SUBDOMAIN_RULE)
    return errors


def qualified_name_errors(value: str) -> list[str]:
    parts = value.split("/")
    if len(parts) > 2:
        return ["a qualified name is an optional DNS subdomain prefix and '/', then a name part "
                "(e.g. 'example.com/MyName')"]
    if len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return ["prefix part must be non-empty"]
        errors = ["prefix part " + error for error in dns_subdomain_errors(prefix)]
        if errors:
            return errors
    else:
        name = parts[0]
    if not name:
        return ["name part must be non-empty"]
    errors = []
    if len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if not re.fullmatch(NAME_PART, name):
        errors.append(NAME_PART_RULE)
    return errors


def label_value_errors(value: str) -> list[str]:
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not re.fullmatch(LABEL_VALUE, value):
        errors.append(LABEL_VALUE_RULE)
    return errors


def _raise(what: str, value, errors: list[str]) -> None:
    if errors:
        raise InvalidInput(f"{what} {value!r} is invalid: {'; '.join(errors)}")


def check_node_name(name, what: str = "node name") -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{what} must be a non-empty string (a DNS subdomain such as 'gpu-1'), "
                           f"got {name!r}")
    _raise(what, name, dns_subdomain_errors(name))
    return name


def check_label(key: str, value) -> None:
    _raise("label key", key, qualified_name_errors(str(key)))
    if value is not None:
        _raise(f"value of label {key}", value, label_value_errors(str(value)))


def check_taints(taints: list[dict], state: str = "present") -> None:
    """Each taint: a qualified key, a label-valued value, a known effect (required when adding)."""
    seen = set()
    for index, taint in enumerate(taints):
        where = f"taints[{index}]"
        key = taint.get("key")
        if not key:
            raise InvalidInput(f"{where}: a taint needs a key")
        _raise(f"{where}: taint key", key, qualified_name_errors(str(key)))
        effect = taint.get("effect")
        if effect is None or effect == "":
            if state == "present":
                raise InvalidInput(f"{where}: taint {key} needs an effect ({', '.join(TAINT_EFFECTS)})")
        elif effect not in TAINT_EFFECTS:
            raise InvalidInput(f"{where}: taint {key} has effect {effect!r}; supported values: "
                               f"{', '.join(TAINT_EFFECTS)}")
        if state == "present":
            _raise(f"{where}: value of taint {key}", taint.get("value") or "",
                   label_value_errors(str(taint.get("value") or "")))
            if (key, effect) in seen:
                raise InvalidInput(f"{where}: taint {key}:{effect} is listed twice (taints are unique by key "
                                   "and effect)")
            seen.add((key, effect))
