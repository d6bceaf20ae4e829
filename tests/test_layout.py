"""The house's rules: which modules may import what, and the old import paths that must keep working."""

import ast
import subprocess
import sys
from pathlib import Path

import zoo

ROOT = Path(zoo.__file__).parent
OPTIONAL = ("birder", "onnx", "onnxruntime", "timm", "open_clip", "zoo.testing")


def zoo_imports(path: Path) -> set[str]:
    """The zoo modules a file imports (absolute imports only: the zoo uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "zoo":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "zoo")
    return found


def test_import_zoo_needs_no_optional_package():
    code = f"import sys, zoo; print(' '.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_nets_stand_alone_and_registry_only_reads():
    for path in (ROOT / "nets").glob("*.py"):
        assert all(m.startswith("zoo.nets") for m in zoo_imports(path)), path
    assert zoo_imports(ROOT / "registry.py") <= {"zoo.nets.pe_vit", "zoo.nets.text"}


def test_library_never_imports_test_scaffolding():
    users = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if any(m.startswith("zoo.testing") for m in zoo_imports(p))}
    assert users <= {"demo.py"} | {p.relative_to(ROOT).as_posix() for p in (ROOT / "testing").glob("*.py")}


def test_first_version_import_paths_still_work():
    from zoo.convert import convert_checkpoint, meta_to_zoo
    from zoo.convert_text import meta_text_to_zoo
    from zoo.safetensors_writer import write_safetensors
    from zoo.tokenizer import Tokenizer

    assert meta_to_zoo is zoo.weights.meta_to_zoo and convert_checkpoint is zoo.weights.convert_checkpoint
    assert meta_text_to_zoo is zoo.weights.meta_text_to_zoo and write_safetensors is zoo.weights.write_safetensors
    assert Tokenizer is zoo.clip.Tokenizer and zoo.convert.read_metadata is zoo.weights.read_metadata
