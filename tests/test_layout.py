"""The house's rules: which modules may import what, and the old import paths that must keep working."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo.testing import layout

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


def test_the_house_has_no_circles_and_no_arrow_up():
    """The floors nets -> registry -> weights -> load -> publish -> uses -> cli (zoo.testing.layout.FLOORS):
    no import circles, no import running back up, and the call path of load_pretrained_model never climbs."""
    g = layout.graph()
    assert "zoo.loader" in g["zoo.hub"] and len(g) > 40  # the graph is read: publishing depends on loading
    assert layout.circles(g) == []
    assert layout.upward(g) == []
    assert layout.climbs() == []
    assert all(m.startswith("zoo.nets") for n in g if n.startswith("zoo.nets") for m in g[n])  # nets import no other zoo


def test_the_checks_see_a_circle_and_an_arrow_up(tmp_path):
    """The measuring tool itself: a copy of the house with publish imported from the loader is caught three ways."""
    shutil.copytree(ROOT, tmp_path / "zoo", ignore=shutil.ignore_patterns("__pycache__", "*.yaml", "*.gz"))
    (tmp_path / "converters").mkdir()
    loader = tmp_path / "zoo" / "loader.py"
    text = loader.read_text()
    loader.write_text(text.replace("    record = resolve(name,", "    from zoo.hub import push_to_hub\n    push_to_hub(name)\n    record = resolve(name,"))
    g = layout.graph(tmp_path)
    assert layout.circles(g) == [["zoo.hub", "zoo.loader"]]
    assert layout.upward(g) == [("zoo.loader", "zoo.hub")]
    assert layout.climbs(root=tmp_path) == [("zoo.loader.load_pretrained_model", "zoo.hub.push_to_hub")]


def test_every_module_is_on_a_floor():
    for name in layout.modules():
        layout.floor(name)  # raises KeyError naming the module


def test_first_version_import_paths_warn_and_name_the_new_one():
    for old, new in {"convert": zoo.weights, "convert_text": zoo.weights.convert_text, "safetensors_writer": zoo.weights.writer,
                     "tokenizer": zoo.clip.tokenizer}.items():
        with pytest.warns(DeprecationWarning, match=f"zoo.{old} is deprecated.*use {new.__name__}"):
            assert getattr(zoo, old) is new
        assert f"zoo.{old}" not in sys.modules  # no silent alias module
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        zoo.nothing  # noqa: B018
