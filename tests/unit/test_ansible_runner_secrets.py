"""The ansible-playbook fixture fails a test whose run prints a secret it was given."""

from __future__ import annotations

import pytest
from fixtures.ansible_runner import SecretPrinted, run_playbook, secrets_in

pytestmark = pytest.mark.ansible


def test_secrets_are_found_under_secret_names_at_any_depth():
    found = secrets_in({"redis_password": "s3cret-1",
                        "users": {"a": {"password": "s3cret-2", "roles": ["r"]}},
                        "api_key": "s3cret-3", "name": "not-a-secret", "token": "{{ lookup('env', 'T') }}",
                        "password": "short"})
    assert found == {"s3cret-1", "s3cret-2", "s3cret-3"}


def test_a_printed_password_fails_the_run(tmp_path):
    with pytest.raises(SecretPrinted, match="1 secret"):
        run_playbook([{"name": "leak", "ansible.builtin.debug": {"msg": "{{ redis_password }}"}}], tmp_path,
                     extra_vars={"redis_password": "leaky-secret-value"})


def test_no_log_keeps_the_run_clean(tmp_path):
    result = run_playbook([{"name": "quiet", "ansible.builtin.debug": {"msg": "{{ redis_password }}"},
                            "no_log": True}], tmp_path, extra_vars={"redis_password": "quiet-secret-value"})
    assert result.returncode == 0 and "quiet-secret-value" not in result.stdout
