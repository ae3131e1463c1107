"""The guest's static tools, built by several processes at once (guest
pools in runner workers do that): each must succeed and leave one complete
binary, no temporary file."""
import multiprocessing
import os
from pathlib import Path

from harness import initramfs


def _build(out_dir: str) -> list[str]:
    return sorted(str(p) for p in initramfs._build_tools(Path(out_dir)).values())


def test_tools_built_by_four_processes_at_once(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_build, [str(tmp_path)] * 4)
    assert all(r == results[0] for r in results) and results[0]
    built = sorted(os.listdir(tmp_path / "tools"))
    assert not [n for n in built if n.endswith(".tmp")], built
    for path in results[0]:
        assert os.access(path, os.X_OK)
        with open(path, "rb") as f:
            assert f.read(4) == b"\x7fELF"
