import os

from click.testing import CliRunner
from gpufleet.agent.cli import agent
from gpufleet.agent.protocol.keys import create_keypair


def test_run_reports_a_bad_config_naming_the_key(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[container]\nport-range = "9-1"\n')
    result = CliRunner().invoke(agent, ["run", "--config", str(path)])
    assert result.exit_code == 1
    assert "[container] port-range" in result.output


def test_run_refuses_a_world_readable_agent_keypair(tmp_path):
    _, secret = create_keypair(tmp_path, "agent")
    create_keypair(tmp_path, "manager")
    os.chmod(secret, 0o644)
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nrpc-auth-agent-keypair = "{secret}"\n'
                    f'rpc-auth-manager-public-key = "{tmp_path / "manager.key"}"\n'
                    '[rpc]\nrequire-root-owner = false\n[etcd]\nenabled = false\n'
                    '[redis]\naddr = "127.0.0.1:1"\n')
    result = CliRunner().invoke(agent, ["run", "--config", str(path)])
    assert result.exit_code == 1 and "must be 0600" in result.output


def test_run_refuses_to_start_without_keys_unless_auth_is_switched_off(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nrpc-auth-agent-keypair = "{tmp_path / "none.key_secret"}"\n'
                    '[etcd]\nenabled = false\n[redis]\naddr = "127.0.0.1:1"\n')
    result = CliRunner().invoke(agent, ["run", "--config", str(path)])
    assert result.exit_code == 1 and "rpc-auth" in result.output and "none.key_secret" in result.output


def test_call_without_keys_explains_where_to_get_them(tmp_path):
    result = CliRunner().invoke(agent, ["call", "--config", str(tmp_path / "missing.toml"), "health"])
    assert result.exit_code == 1 and "no such configuration file" in result.output
    result = CliRunner().invoke(agent, ["call", "--address", "127.0.0.1:1", "health"],
                                env={"GPUFLEET_MANAGER_KEYPAIR": str(tmp_path / "nope")})
    assert result.exit_code == 1 and "agent public key" in result.output
    public, _ = create_keypair(tmp_path, "agent")
    result = CliRunner().invoke(agent, ["call", "--address", "127.0.0.1:1", "--agent-public-key", str(public),
                                        "--manager-keypair", str(tmp_path / "nope"), "health"])
    assert result.exit_code == 1 and str(tmp_path / "nope") in result.output


def test_call_to_nowhere_fails_cleanly(tmp_path):
    result = CliRunner().invoke(agent, ["call", "--address", "127.0.0.1:1", "--no-auth", "--timeout", "2",
                                        "health"])
    assert result.exit_code == 1 and "no answer from tcp://127.0.0.1:1" in result.output


def test_raw_args_must_be_a_json_array():
    result = CliRunner().invoke(agent, ["call", "--address", "127.0.0.1:1", "--no-auth", "raw", "ping", "{}"])
    assert result.exit_code == 2 and "JSON array" in result.output
