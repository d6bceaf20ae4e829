"""Library manners: ``__all__`` everywhere, no printing in the library (the CLI prints), one version from the
installed metadata, the ``pe-zoo`` console script, ``--device`` on every command that runs a net, ``py.typed``."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import zoo
from zoo.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p for d in ("zoo", "converters") for p in (ROOT / d).rglob("*.py") if p.name != "__main__.py")
LIBRARY = [p for p in MODULES if p.parts[len(ROOT.parts)] == "zoo" and "cli" not in p.relative_to(ROOT / "zoo").parts]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_every_module_declares_its_public_names(path):
    module = importlib.import_module(module_name(path))
    assert isinstance(getattr(module, "__all__", None), list), f"{module_name(path)} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{module_name(path)}.__all__ names what it does not define: {missing}"


def test_the_library_never_prints():
    """Library modules log through the "zoo" logger; only zoo.cli and the converters' commands write to the console."""
    offenders = []
    for path in LIBRARY:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name) and node.id == "print":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} print")
            if isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr") and getattr(node.value, "id", "") == "sys":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} sys.{node.attr}")
    assert len(LIBRARY) > 20 and not offenders, offenders


def test_a_library_session_writes_nothing_to_the_console(tmp_path):
    """Convert on load from an offline Hub cache (logged at INFO), load again, embed, tokenize: stdout and
    stderr stay empty when the application configured no logging."""
    code = textwrap.dedent(f"""
        import torch
        import zoo
        from zoo.inference import infer_image
        from zoo.registry import get_entry
        from zoo.testing.hub_cache import add_file, use_cache
        from zoo.testing.synthetic import meta_vision_state_dict
        from PIL import Image

        entry = get_entry("rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial")
        torch.save(meta_vision_state_dict(entry.config, seed=0), {str(tmp_path / "meta.pt")!r})
        add_file({str(tmp_path / "hub")!r}, entry.source.repo, entry.source.file, {str(tmp_path / "meta.pt")!r})
        with use_cache({str(tmp_path / "hub")!r}, offline=True):
            for _ in range(2):  # converts, then loads the converted file
                net, info = zoo.load_pretrained_model(entry.name, inference=True, weights_dir={str(tmp_path / "w")!r})
        transform = zoo.classification_transform(64, info.rgb_stats)
        infer_image(net, Image.new("RGB", (50, 70)), transform, return_embedding=True)
        zoo.get_tokenizer("rope_i_vit_t16_pn_aps_c1_pe-core")(["a photo of a cat"])
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    assert (tmp_path / "w" / "rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial.safetensors").is_file()  # it did convert


def test_version_comes_from_the_installed_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert zoo.__version__ == importlib.metadata.version("pe-zoo") == project["version"]
    written = [p for p in (ROOT / "zoo").rglob("*.py") if project["version"] in p.read_text(encoding="utf-8")]
    assert not written  # pyproject.toml is the one place the number is written


def test_pe_zoo_console_script_prints_the_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"pe-zoo": "zoo.cli:main"}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = Path(sys.executable).parent / "pe-zoo"
    cmd = [str(script), "--version"] if script.exists() else [sys.executable, "-m", "zoo", "--version"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"pe-zoo {zoo.__version__}\n", ""), cmd


def test_every_command_that_runs_a_net_takes_device():
    sub = next(a for a in build_parser()._actions if isinstance(a.choices, dict))
    for name, parser in sub.choices.items():
        options = {o for a in parser._actions for o in a.option_strings}
        # info only reads; export traces and checks on the CPU (the graph is not tied to a device)
        runs_a_net = ("--dtype" in options or "--weights-dir" in options) and name not in ("info", "export")
        assert ("--device" in options) == runs_a_net, name
    assert {"embed", "features", "classify"} <= set(sub.choices)


def test_package_is_typed():
    assert (ROOT / "zoo" / "py.typed").is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["zoo"]
