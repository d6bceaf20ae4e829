"""zoo.weights.read_tensors maps each tensor on its own: values exact, pages from the file, released with the tensor."""

import gc
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zoo.weights import read_tensors


def mappings_of(path: Path) -> list[tuple[int, int]]:
    spans = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == str(path.resolve()):
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            spans.append((lo, hi))
    return spans


def test_each_tensor_has_its_own_mapping_of_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    sd = {"a": torch.randn(300, 500), "b": torch.randn(7).bfloat16(), "c": torch.zeros(0, 3), "d": torch.arange(5)}
    save_file(sd, path)
    got = read_tensors(path)
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) and got[k].dtype == sd[k].dtype for k in sd)
    spans = mappings_of(path)
    for k in ("a", "b", "d"):
        ptr = got[k].data_ptr()
        assert any(lo <= ptr and ptr + got[k].nbytes <= hi for lo, hi in spans), k
    got["a"].mul_(2)  # copy-on-write: the file is untouched
    assert torch.equal(read_tensors(path)["a"], sd["a"])
    gc.collect()
    before = len(mappings_of(path))
    del got["a"]
    gc.collect()
    assert len(mappings_of(path)) == before - 1  # a's pages went with it


def test_malformed_entry_is_refused(tmp_path):
    header = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(ValueError, match="malformed safetensors entry 'x'"):
        read_tensors(path)
