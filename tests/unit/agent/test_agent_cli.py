import os

from click.testing import CliRunner
from gpufleet.agent.cli import agent


def test_run_reports_a_bad_config_naming_the_key(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[container]\nport-range = "9-1"\n')
    result = CliRunner().invoke(agent, ["run", "--config", str(path)])
    assert result.exit_code == 1
    assert "[container] port-range" in result.output


def test_run_refuses_a_world_readable_token(tmp_path):
    token = tmp_path / "token"
    token.write_text("x" * 32)
    os.chmod(token, 0o644)
    path = tmp_path / "agent.toml"
    path.write_text(f'[rpc]\ntoken-file = "{token}"\nrequire-root-owner = false\n')
    result = CliRunner().invoke(agent, ["run", "--config", str(path)])
    assert result.exit_code == 1 and "must be 0600" in result.output


def test_call_without_a_token_explains_where_to_get_one(tmp_path, monkeypatch):
    monkeypatch.delenv("GPUFLEET_AGENT_TOKEN", raising=False)
    result = CliRunner().invoke(agent, ["call", "--address", "127.0.0.1:1", "health"])
    assert result.exit_code == 1 and "no token" in result.output


def test_call_to_nowhere_fails_cleanly():
    result = CliRunner().invoke(agent, ["call", "--address", "127.0.0.1:1", "--token", "t" * 20, "health"])
    assert result.exit_code == 1 and "cannot reach the agent at http://127.0.0.1:1" in result.output


def test_raw_params_must_be_a_json_object():
    result = CliRunner().invoke(agent, ["call", "--address", "127.0.0.1:1", "--token", "t" * 20,
                                        "raw", "ping", "[1]"])
    assert result.exit_code == 2 and "JSON object" in result.output
