import json
import os

import pytest
from gpufleet.agent.registry import KernelRecord, KernelRegistry, Scratch


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


def test_scratch_layout_and_removal(tmp_path):
    scratch = Scratch(tmp_path, "k1")
    scratch.create({"CUDA_VISIBLE_DEVICES": "1,3", "A": "b"}, {"cpu": 2, "mem": 10, "cuda.device": 2}, [1, 3])
    assert (tmp_path / "k1" / "work").is_dir()
    assert (scratch.config / "environ.txt").read_text() == "A=b\nCUDA_VISIBLE_DEVICES=1,3\n"
    resource = (scratch.config / "resource.txt").read_text().splitlines()
    assert "cuda.device=2" in resource and "cuda.device.indices=1,3" in resource
    scratch.remove()
    assert not (tmp_path / "k1").exists()


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "/home/work/../../etc", "a\x00b"])
def test_paths_outside_scratch_are_refused(tmp_path, bad):
    scratch = Scratch(tmp_path, "k1")
    scratch.create({}, {}, [])
    with pytest.raises(PermissionError):
        scratch.resolve_inside(bad)


def test_symlink_escape_refused_and_inside_paths_allowed(tmp_path):
    scratch = Scratch(tmp_path, "k1")
    scratch.create({}, {}, [])
    (scratch.work / "link").symlink_to("/etc")
    with pytest.raises(PermissionError):
        scratch.resolve_inside("link/passwd")
    assert scratch.resolve_inside("sub/file.txt") == scratch.work.resolve() / "sub" / "file.txt"
    assert scratch.resolve_inside("/home/work/x") == scratch.work.resolve() / "x"
    assert scratch.resolve_inside(".") == scratch.work.resolve()
