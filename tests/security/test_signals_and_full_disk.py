"""Bullets: SIGTERM or SIGHUP mid-merge leaves no temporary directory beside the output; a
full disk (merge, export) is one sentence naming the path and the bytes needed, with
nothing written -- no traceback, no 0-byte file."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import yaml
from fuzz_inputs import run_cli

# `evomerge merge` that stops (sleeps) once its first tensor is on disk: the moment to kill it
SLOW_MERGE = """
import sys, time
from evomerge.engine import writer
write = writer.ShardedWriter.write
def slow(self, name, tensor):
    write(self, name, tensor)
    if self._next == 1:
        print("writing", flush=True)
        time.sleep(120)
writer.ShardedWriter.write = slow
from evomerge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _recipe(tiny, tmp_path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"merge_method": "ties", "base_model": tiny["base"],
                                    "models": [{"model": tiny[m], "parameters": {
                                        "weight": 0.5, "density": 0.5}} for m in "ab"]}))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_killed_merge_leaves_nothing_behind(tiny, tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_MERGE, "merge",
                             str(_recipe(tiny, tmp_path)), str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]  # mid-merge
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    err = proc.stderr.read().strip()
    assert code == 128 + sig and err == f"evomerge: stopped by {sig.name}; nothing was written."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


Disk = namedtuple("Disk", "dir plenty tmpfs")  # plenty(): report free space, so writing starts


@pytest.fixture(params=["tmpfs", "injected"])
def disk(request, tmp_path, monkeypatch):
    """A full disk: a 64 KiB tmpfs (as root), or ENOSPC injected into the writes."""
    import evomerge.engine.outputs as outputs
    import evomerge.engine.writer as writer

    usage = namedtuple("usage", "total used free")
    plenty = lambda: monkeypatch.setattr(outputs.shutil, "disk_usage",  # noqa: E731
                                         lambda p: usage(10**12, 0, 10**12))
    if request.param == "tmpfs":
        mnt = tmp_path / "small"
        mnt.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True).returncode != 0:
            pytest.skip("mounting a tmpfs needs root and CAP_SYS_ADMIN; 'injected' runs")
        yield Disk(mnt, plenty, True)
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        return

    class Full(io.FileIO):
        def write(self, data):  # noqa: ANN001
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: usage(10**6, 10**6, 0))
    monkeypatch.setattr(writer, "open", lambda p, mode: Full(p, mode), raising=False)
    monkeypatch.setattr(outputs.os, "fdopen", lambda fd, mode: Full(fd, mode.replace("b", "")))
    yield Disk(tmp_path / "small", plenty, False)


def _one_sentence(code: int, err: str, path: Path) -> None:
    assert code == 2 and err.startswith("evomerge: error: No space left on the device of ")
    assert str(path) in err and "bytes" in err and "\n" not in err, err


@pytest.mark.parametrize("when", ["before writing", "while writing"])
def test_a_full_disk_is_one_sentence_and_leaves_nothing(disk, tiny, tmp_path, when):
    disk.dir.mkdir(exist_ok=True)
    if when == "while writing":
        disk.plenty()  # free space looks fine: the writes themselves hit ENOSPC
    out = disk.dir / "out"
    code, err = run_cli(["merge", str(_recipe(tiny, tmp_path)), str(out), "-q"])
    _one_sentence(code, err, out)
    assert list(disk.dir.iterdir()) == []


def test_export_to_a_full_disk_leaves_no_empty_file(disk, study_root):
    disk.dir.mkdir(exist_ok=True)
    filler = disk.dir / "filler"
    if disk.tmpfs:  # fill the 64 KiB tmpfs to its last byte (never any other filesystem)
        assert os.statvfs(disk.dir).f_blocks * os.statvfs(disk.dir).f_frsize <= 1 << 20
        try:
            with open(filler, "wb") as fh:
                for _ in range(64):
                    fh.write(b"\0" * 4096)
        except OSError:
            pass
    out = disk.dir / "recipe.yaml"
    code, err = run_cli(["export", "dash", "--results", str(study_root), "--best", "-o", str(out)])
    _one_sentence(code, err, out)
    assert sorted(p.name for p in disk.dir.iterdir()) == (["filler"] if filler.exists() else [])
