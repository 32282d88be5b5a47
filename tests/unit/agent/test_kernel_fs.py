"""kernel_fs: the agent's file operations inside a kernel's scratch (symlink- and race-proof)."""

import os
import stat

import pytest
from gpufleet.agent import kernel_fs
from gpufleet.agent.kernel_fs import KernelFileError, KernelScratch, PathRefused


@pytest.fixture
def scratch(tmp_path):
    scratch = KernelScratch(tmp_path, "k1")
    scratch.create({"CUDA_VISIBLE_DEVICES": "1,3", "A": "b"}, {"cpu": 2, "mem": 10, "cuda.device": 2}, [1, 3])
    return scratch


def test_scratch_layout_modes_and_removal(scratch, tmp_path):
    assert stat.S_IMODE((tmp_path / "k1").stat().st_mode) == 0o711
    assert stat.S_IMODE(scratch.work.stat().st_mode) == 0o700
    assert stat.S_IMODE(scratch.config.stat().st_mode) == 0o750
    assert (scratch.config / "environ.txt").read_text() == "A=b\nCUDA_VISIBLE_DEVICES=1,3\n"
    resource = (scratch.config / "resource.txt").read_text().splitlines()
    assert "cuda.device=2" in resource and "cuda.device.indices=1,3" in resource
    scratch.write_runner(kernel_fs.__file__, "tok")
    assert stat.S_IMODE((scratch.config / "runner.token").stat().st_mode) == 0o440
    scratch.remove()
    assert not (tmp_path / "k1").exists()
    scratch.remove()  # idempotent


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "/home/work/../../etc", "a\x00b"])
def test_paths_outside_scratch_are_refused(bad):
    with pytest.raises(PathRefused):
        kernel_fs.split_path(bad)


def test_kernel_view_and_relative_paths_split_alike():
    assert kernel_fs.split_path("/home/work/a/./b") == ["a", "b"] == kernel_fs.split_path("a//b/")
    assert kernel_fs.split_path(".") == [] == kernel_fs.split_path("/home/work")


@pytest.mark.parametrize(("bad", "message"), [
    ("x" * 300, "longer than 255 bytes"), ("a/" * 2100, "longer than 4096 bytes"),
    ("bad-\udcff", "not valid UTF-8"),
])
def test_hostile_names_get_a_clear_error(bad, message):
    with pytest.raises(KernelFileError, match=message):
        kernel_fs.split_path(bad)


def test_upload_download_list_and_refusals(scratch):
    with scratch.work_fd() as work:
        assert kernel_fs.upload(work, "sub/dir/f.txt", b"hello", None) == 5
        assert kernel_fs.download(work, "/home/work/sub/dir/f.txt", None, 100) == b"hello"
        kernel_fs.upload(work, "sub/dir/f.txt", b"again", None)  # replaced, not appended
        assert kernel_fs.download(work, "sub/dir/f.txt", None, 100) == b"again"
        with pytest.raises(KernelFileError, match="is a directory"):
            kernel_fs.upload(work, "sub/dir", b"x", None)
        with pytest.raises(KernelFileError, match="is a directory"):
            kernel_fs.download(work, "sub", None, 100)
        with pytest.raises(KernelFileError, match="larger than 3 bytes"):
            kernel_fs.download(work, "sub/dir/f.txt", None, 3)
        with pytest.raises(FileNotFoundError):
            kernel_fs.download(work, "nope", None, 100)
        os.symlink("/etc", scratch.work / "link")
        os.symlink("/etc/passwd", scratch.work / "pw")
        with pytest.raises(PathRefused, match="symlink"):
            kernel_fs.download(work, "link/passwd", None, 1 << 20)
        with pytest.raises(PathRefused, match="symlink"):
            kernel_fs.download(work, "pw", None, 1 << 20)
        with pytest.raises(PathRefused, match="symlink"):
            kernel_fs.upload(work, "link/evil", b"x", None)
        with pytest.raises(PathRefused, match="symlink"):
            kernel_fs.list_dir(work, "link")
        (scratch.work / os.fsdecode(b"raw-\xff")).write_bytes(b"")
        listing = kernel_fs.list_dir(work, ".")
    by_name = {e["name"]: e for e in listing["files"]}
    assert by_name["link"]["type"] == "symlink" and by_name["sub"]["type"] == "dir"
    assert by_name["raw-\\xff"]["name_not_utf8"] is True
    assert not os.path.exists("/etc/evil")


def test_uploading_over_a_symlink_replaces_the_link_not_its_target(scratch, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    os.symlink(outside, scratch.work / "target")
    with scratch.work_fd() as work:
        kernel_fs.upload(work, "target", b"new", None)
    assert outside.read_text() == "keep"
    assert not (scratch.work / "target").is_symlink() and (scratch.work / "target").read_bytes() == b"new"


def test_log_is_read_without_following_a_link(scratch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root-only")
    os.symlink(secret, scratch.config / "kernel.log")
    assert scratch.read_log() == ""
    os.unlink(scratch.config / "kernel.log")
    fd = scratch.open_log()
    os.write(fd, b"line 1\nline 2\n")
    os.close(fd)
    assert scratch.read_log(7) == "line 2\n"
