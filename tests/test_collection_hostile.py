"""Collections under hostile and careless input (issue 21) and collections that grow (``--append``, issue 26).

Every case here failed on the code before the fix: a foreign folder's files deleted, a live run's
temporaries taken, a damaged or received manifest read blindly, a query embedded with other weights,
non-finite rows hiding a shard, links and spellings giving extra rows, a FIFO hanging the run, names
breaking the line formats.
"""

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zoo
import torch

from tests.weights_env import CORE, SMALL_TEXT
from zoo.__main__ import main
from zoo.collection import CollectionError, MappedRows, expand_inputs, top_k
from zoo.collection.embed import ImageFiles
from zoo.collection.store import (
    FORMAT, escape_line, remove_temporaries, write_manifest, write_shard,
)
from zoo.paths import weights_dir
from zoo.registry import load_registry
from zoo.testing.hub_cache import use_cache
from zoo.testing.synthetic import meta_clip_state_dict
from zoo.weights import convert_checkpoint

SIZE = "64"
DIM = 192  # T16's width
# PE-Core T16 cut to one block, under its registry name: every code path of a collection, in a fraction of the time
SMALL = dataclasses.replace(CORE, config=dataclasses.replace(CORE.config, depth=1), text=SMALL_TEXT)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def small_core(mp: pytest.MonkeyPatch, folder: Path) -> None:
    """Random one-block T16 Core weights converted into a $ZOO_HOME in ``folder``, the registry's T16 Core entry
    cut to one block (until ``mp`` is undone); use inside an offline Hub cache."""
    mp.setitem(load_registry(), CORE.name, SMALL)
    mp.setenv("ZOO_HOME", str(folder / "zoo-home"))
    torch.save(meta_clip_state_dict(SMALL.config, SMALL.text, seed=0), folder / "src.pt")
    convert_checkpoint(SMALL, folder / "src.pt", weights_dir())


@pytest.fixture(scope="module")
def core_home(module_tmp):
    with pytest.MonkeyPatch.context() as mp, use_cache(module_tmp / "hub-cache", offline=True):
        small_core(mp, module_tmp)
        yield weights_dir()


def embed(*args: str) -> int:
    return main(["embed", CORE.name, *args, "--size", SIZE, "--workers", "0", "-q"])


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def fake_collection(folder: Path, blocks: list[np.ndarray], changes: dict | None = None) -> Path:
    """A finished collection written through the collection's own writer (no model): rows as given, then
    ``changes`` made to its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, rows in enumerate(blocks):
        write_shard(folder, i, rows, [f"img{i}-{j}.jpg" for j in range(len(rows))], [])
    settings = {"format": FORMAT, "model": CORE.name, "weights_sha256": "0" * 64, "what": "embedding",
                "normalize": False, "dtype": "float32", "size": [64, 64], "dim": blocks[0].shape[1],
                "store_dtype": str(blocks[0].dtype), "shard_size": 4, "num_inputs": 0, "inputs_sha256": "0" * 64}
    write_manifest(folder, settings, len(blocks))
    if changes:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest.update(changes)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


# ------------------------------------------------------------------ the output folder
def test_foreign_folder_refused_untouched(core_home, tmp_path, capsys):
    """A project folder with its own settings.json and hidden .tmp files: refused, nothing deleted."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "a.jpg")
    project = tmp_path / "project"
    project.mkdir()
    (project / "settings.json").write_text('{"theme": "dark"}')
    hidden = [project / ".draft.tmp", project / f".notes.txt.{dead_pid()}.ab12cd34.tmp"]
    for f in hidden:
        f.write_text("mine")
    assert embed(str(images), "--out", str(project)) == 1
    assert "not a pe-zoo collection's" in one_line(capsys)
    assert all(f.read_text() == "mine" for f in hidden)
    for odd in ("[1, 2]", '{"format": "pe-zoo-collection/1", "model": 3}'):  # a list; odd-typed keys
        (project / "settings.json").write_text(odd)
        assert embed(str(images), "--out", str(project)) == 1
        one_line(capsys)
    assert sorted(p.name for p in project.iterdir()) == sorted([*(f.name for f in hidden), "settings.json"])


def test_live_writers_temporaries_kept(tmp_path):
    """Only temporaries of ended processes are removed: a second run never takes a live run's shard."""
    live = tmp_path / f".shard-00000.npy.{os.getpid()}.ab12cd34.tmp"
    stale = tmp_path / f".shard-00001.npy.{dead_pid()}.ab12cd34.tmp"
    for f in (live, stale):
        f.write_bytes(b"rows")
    remove_temporaries(tmp_path)
    assert live.exists() and not stale.exists()


def test_killed_while_writing_settings_resumes(core_home, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), "red").save(images / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / f".settings.json.{dead_pid()}.ab12cd34.tmp").write_text('{"format": "pe-zo')  # kill -9 mid-write
    assert embed(str(images), "--out", str(out)) == 0
    assert zoo.read_embeddings(out)[1].shape == (1, DIM)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ reading a collection
@pytest.mark.parametrize("change,message", [
    ({"shards": "many"}, "'shards' is missing or not a list"),
    ({"dim": "192"}, "'dim' is missing or not an int"),
    ({"rows": None}, "'rows' is missing or not an int"),
    ({"shards": [{"embeddings": "shard-00000.npy"}]}, "shard 0 is not an object"),
    ({"shards": [{"embeddings": "/etc/passwd", "paths": "shard-00000.json", "rows": 3}]}, "not a plain file name"),
    ({"shards": [{"embeddings": "../x/shard-00000.npy", "paths": "shard-00000.json", "rows": 3}]}, "not a plain file name"),
    ({"shards": [{"embeddings": "shard-00000.npy", "paths": "..", "rows": 3}]}, "not a plain file name"),
    ({"rows": 4}, "do not add up to 4"),
    ({"appends": "x"}, "'appends' is not a list"),
])
def test_damaged_or_hostile_manifest_one_clear_error(tmp_path, change, message):
    out = fake_collection(tmp_path / "c", [np.ones((3, 8), np.float16)], change)
    with pytest.raises(CollectionError, match=message):
        zoo.read_embeddings(out)


def test_manifest_not_an_object_and_odd_shard_dtypes(tmp_path, capsys):
    out = fake_collection(tmp_path / "c", [np.ones((3, 8), np.float16)])
    (out / "manifest.json").write_text("[]")
    with pytest.raises(CollectionError, match="a JSON list, not an object"):
        zoo.read_embeddings(out)
    assert main(["search", str(out), "--image", "q.jpg"]) == 1
    one_line(capsys)
    for dtype in (np.int8, np.bool_, np.complex64, np.float32):  # float32 where the manifest says float16
        out = fake_collection(tmp_path / np.dtype(dtype).name, [np.ones((3, 8), np.float16)])
        np.save(out / "shard-00000.npy", np.ones((3, 8), dtype))
        with pytest.raises(CollectionError, match=f"holds {np.dtype(dtype).name} rows"):
            zoo.read_embeddings(out)
    (out / "shard-00000.json").write_text("[1]")
    np.save(out / "shard-00000.npy", np.ones((3, 8), np.float16))
    with pytest.raises(CollectionError, match="does not match"):
        zoo.read_embeddings(out)


def test_mapped_rows_index_like_numpy():
    rows = MappedRows([np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((2, 4), np.float32)], 4, np.float32)
    whole = np.asarray(rows)
    for bad in (2.7, True, np.bool_(False), np.array([True, False]), [0.5, 1], np.ones((5, 1), bool)):
        with pytest.raises(IndexError):
            rows[bad]
    mask = np.array([True, False, False, True, True])
    assert np.array_equal(rows[mask], whole[mask]) and np.array_equal(rows[[]], whole[[]])
    assert np.array_equal(rows[np.int64(4)], whole[4])


def test_non_finite_rows_skipped_and_counted(tmp_path, caplog):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 8)).astype(np.float16), rng.standard_normal((4, 8)).astype(np.float16)
    a[1, 3], b[2, 0] = np.nan, np.inf
    rows = MappedRows([a, b], 8, np.float16)
    with caplog.at_level(logging.WARNING, logger="zoo"):
        scores, index = top_k(rows, a[0], 1)
    assert list(index) == [0] and abs(scores[0] - 1) < 1e-3
    assert "skipped 2 of 8 rows holding NaN or inf" in caplog.text
    scores, index = top_k(rows, b[3], 8)  # every finite row, none of the others
    assert sorted(index) == [0, 2, 3, 4, 5, 7] and np.isfinite(scores).all()
    out = fake_collection(tmp_path / "c", [a])
    assert [h.row for h in zoo.search(out, a[0], k=1)] == [0]
    a[:] = np.nan  # a shard with no finite row at all
    assert top_k(MappedRows([a, b], 8, np.float16), b[3], 1)[1].tolist() == [7]


def test_query_with_other_weights_refused(core_home, tmp_path, capsys):
    """The collection records weights 000...; the name resolves to other weights now: refused before any query."""
    out = fake_collection(tmp_path / "c", [np.ones((3, DIM), np.float16)])
    image = tmp_path / "q.jpg"
    Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(CollectionError, match="not the ones this collection was embedded with"):
        zoo.search(out, image=image)
    assert main(["search", str(out), "--image", str(image)]) == 1
    assert "sha256" in one_line(capsys)
    for empty in ("", "  \t"):
        with pytest.raises(ValueError, match="text query is empty"):
            zoo.search(out, text=empty)


# ------------------------------------------------------------------ inputs
def test_links_spellings_and_fifos(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p" / "sub").mkdir(parents=True)
    for name in ("p/a.jpg", "p/sub/b.jpg", "p/c.jpg"):
        Path(name).write_bytes(b"")
    os.symlink("..", "p/sub/loop")  # p/sub/loop/sub/loop/... : a loop
    os.symlink("sub", "p/also-sub")  # a second way into p/sub
    os.mkfifo("p/camera.jpg")
    assert expand_inputs(["p"]) == ["p/a.jpg", "p/also-sub/b.jpg", "p/c.jpg"]
    assert expand_inputs(["p/a.jpg", "./p/a.jpg", str(tmp_path / "p" / "a.jpg"), "p/sub/../a.jpg"]) == ["p/a.jpg"]
    assert expand_inputs(["p/*.jpg"]) == ["p/a.jpg", "p/c.jpg"]
    found = []  # a FIFO given by name: a reason, never a blocked open()
    reader = threading.Thread(target=lambda: found.append(ImageFiles(["p/camera.jpg"], None)[0]), daemon=True)
    reader.start()
    reader.join(30)
    assert found and found[0][1] is None and "not a regular file" in found[0][2]


def test_line_formats_escape_names(tmp_path):
    """Tab, newline, backslash and non-UTF-8 bytes in a name: errors.txt keeps one line per image, and is written."""
    odd = ["tab\there.jpg", "new\nline.jpg", "back\\slash.jpg", os.fsdecode(b"caf\xe9.jpg")]
    write_shard(tmp_path, 0, np.ones((1, 4), np.float16), ["ok.jpg"], [(p, "OSError: bad\ndata") for p in odd])
    write_manifest(tmp_path, {"format": FORMAT}, 1)
    lines = (tmp_path / "errors.txt").read_text(encoding="utf-8").splitlines()
    assert lines == ["tab\\there.jpg\tOSError: bad data", "new\\nline.jpg\tOSError: bad data",
                     "back\\\\slash.jpg\tOSError: bad data", "caf\\xe9.jpg\tOSError: bad data"]
    assert escape_line("plain/ä.jpg") == "plain/ä.jpg"


# ------------------------------------------------------------------ --append
@pytest.fixture(scope="module")
def two_batches(core_home, module_tmp):
    """Images in two folders, with odd names; the second adds new images, a repeat of the first and two unreadable ones."""
    rng = np.random.default_rng(1)
    first, second = module_tmp / "first", module_tmp / "second"
    first.mkdir(), second.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(first / f"{i}.jpg")
    for name in ("tab\tname.jpg", "x.png", "y.jpg", "z.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(second / name)
    os.symlink(first / "0.jpg", second / "again.jpg")  # already in the collection
    (second / os.fsdecode(b"caf\xe9.jpg")).write_bytes(b"no image")
    (second / "new\nline.jpg").write_bytes(b"no image")
    return first, second


def rows_by_path(out: Path) -> dict[str, np.ndarray]:
    paths, rows = zoo.read_embeddings(out)
    return {os.path.realpath(p): rows[i].astype(np.float32) for i, p in enumerate(paths)}


def assert_same_rows(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """The same files, each with the same row up to float16 rounding (batches group the images differently)."""
    assert sorted(a) == sorted(b)
    for path in a:
        np.testing.assert_allclose(a[path], b[path], rtol=0, atol=2e-3 * max(1.0, float(np.abs(b[path]).max())))


OPTS = ["--shard-size", "2", "--batch-size", "2"]


@pytest.fixture(scope="module")
def grown(two_batches, module_tmp):
    """The first batch embedded, then both batches given with --append, stopped after its first new shard (as by
    kill -9) and run again; and the same inputs embedded at once."""
    import zoo.collection.embed as embed_module

    first, second = two_batches
    whole, grown = module_tmp / "whole", module_tmp / "grown"
    assert embed(str(first), str(second), "--out", str(whole), *OPTS) == 0
    assert embed(str(first), "--out", str(grown), *OPTS) == 0
    calls = []

    def write_shard_then_die(*args):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        write_shard(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(embed_module, "write_shard", write_shard_then_die)
        with pytest.raises(KeyboardInterrupt):
            embed(str(first), str(second), "--out", str(grown), *OPTS, "--append")
    before = json.loads((grown / "manifest.json").read_text())
    pending = (grown / "append.json").exists()
    written = (grown / "shard-00002.npy").stat().st_mtime_ns
    assert embed(str(first), str(second), "--out", str(grown), *OPTS, "--append") == 0
    return whole, grown, before, pending, written


def test_append_equals_embedding_everything_at_once(two_batches, grown, capsys):
    first, second = two_batches
    whole, grown, before, pending, written = grown
    assert before["rows"] == 3 and len(before["shards"]) == 2 and pending  # the stopped append changed no manifest
    assert (grown / "shard-00002.npy").stat().st_mtime_ns == written and not (grown / "append.json").exists()
    manifest = json.loads((grown / "manifest.json").read_text())
    assert manifest["rows"] == 7 and manifest["errors"] == 2 and len(manifest["shards"]) == 5
    assert [{k: a[k] for k in ("first_shard", "num_inputs")} for a in manifest["appends"]] == [{"first_shard": 2, "num_inputs": 6}]
    assert_same_rows(rows_by_path(grown), rows_by_path(whole))
    errors = sorted((grown / "errors.txt").read_text(encoding="utf-8").splitlines())
    assert errors == sorted((whole / "errors.txt").read_text(encoding="utf-8").splitlines()) and len(errors) == 2
    assert any("caf\\xe9.jpg\t" in e for e in errors) and any("new\\nline.jpg\t" in e for e in errors)
    # refused in one line, before the weights load: other options, no --append, no collection
    for extra, diff in ((["--what", "clip"], "what 'embedding' there, 'clip' asked"),
                        (["--store-dtype", "float32"], "store_dtype 'float16' there"),
                        (["--shard-size", "3"], "shard_size 2 there"), (["--normalize"], "normalize False there")):
        assert embed(str(second), "--out", str(grown), "--append", *OPTS, *extra) == 1
        assert diff in one_line(capsys)
    assert embed(str(first), str(second), "--out", str(whole), *OPTS) == 0  # complete
    assert embed(str(first), str(second / "x.png"), "--out", str(whole), *OPTS) == 1
    assert "pass --append" in one_line(capsys)
    assert embed(str(second), "--out", str(grown / "none"), "--append") == 1
    assert "--append adds to a finished collection" in one_line(capsys)


@pytest.mark.slow
def test_append_pending_nothing_new_size_and_search_lines(two_batches, grown, tmp_path, capsys):
    first, second = two_batches
    _, grown, _, _, _ = grown
    manifest = json.loads((grown / "manifest.json").read_text())
    assert embed(str(first), str(second), "--out", str(grown), *OPTS, "--append") == 0  # nothing new
    assert json.loads((grown / "manifest.json").read_text()) == manifest
    assert main(["embed", CORE.name, str(second), "--out", str(grown), "--append", *OPTS, "--size", "32",
                 "--workers", "0"]) == 1
    assert "size [64, 64] there, [32, 32] asked" in one_line(capsys)
    # another append pending (stopped): a different one is refused
    (grown / "append.json").write_text(json.dumps({"first_shard": 5, "num_inputs": 9, "inputs_sha256": "0" * 64}))
    extra = tmp_path / "extra.jpg"
    Image.new("RGB", (32, 32)).save(extra)
    assert embed(str(extra), "--out", str(grown), *OPTS, "--append") == 1
    assert "interrupted append of other inputs" in one_line(capsys)
    (grown / "append.json").unlink()
    # search output: one line per hit, whatever the name
    hit = second / "tab\tname.jpg"
    assert main(["search", str(grown), "--image", str(hit), "-k", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and lines[0].split("  ")[-1] == escape_line(str(hit))
