import json
import os

from gpufleet.agent.registry import KernelRecord, KernelRegistry


def record(kid="k1"):
    return KernelRecord(kernel_id=kid, session_id="s1", status="running",
                        allocation={"kernel_id": kid, "cpu": 1.0, "mem": 1 << 20, "gpus": [1]},
                        ports=[30000, 30001], runner_token="secret-token")


def test_registry_persists_and_reloads(tmp_path):
    reg = KernelRegistry(tmp_path)
    reg.put(record("a"))
    reg.put(record("b"))
    reg.remove("a")
    assert os.stat(reg.path).st_mode & 0o777 == 0o600
    again = KernelRegistry(tmp_path)
    loaded = again.load()
    assert [r.kernel_id for r in loaded] == ["b"]
    assert loaded[0].ports == [30000, 30001] and loaded[0].allocation["gpus"] == [1]


def test_corrupt_registry_is_kept_aside(tmp_path):
    reg = KernelRegistry(tmp_path)
    reg.path.write_text("{not json")
    assert reg.load() == []
    assert any(p.name.startswith("agent-kernels.corrupt-") for p in tmp_path.iterdir())


def test_public_view_hides_the_runner_token():
    data = record().public()
    assert "runner_token" not in data
    assert data["slots"] == {"cpu": 1.0, "mem": 1 << 20, "cuda.device": 1}
    assert data["gpu_indices"] == [1]
    assert "secret-token" not in json.dumps(data)
