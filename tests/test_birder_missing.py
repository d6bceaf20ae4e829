"""The birder extra is optional: ``import zoo`` never imports it, ``import zoo.birder`` without it says what to install."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300)


def test_import_zoo_does_not_import_birder():
    r = _run("""
        import sys, zoo
        zoo.list_pretrained_models()
        assert not [m for m in sys.modules if m == "birder" or m.startswith("birder.")], "birder imported"
        print("OK")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr[-2000:]


def test_zoo_birder_without_birder_names_the_extra():
    """With birder hidden from the import system, ``import zoo.birder`` fails with one line naming the extra."""
    r = _run("""
        import sys
        class HideBirder:
            def find_spec(self, name, path=None, target=None):
                if name == "birder" or name.startswith("birder."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, HideBirder())
        import zoo
        try:
            import zoo.birder
        except ImportError as e:
            print(str(e))
        else:
            print("imported")
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines() == ["zoo.birder needs birder: pip install 'pe-zoo[birder]'"]
