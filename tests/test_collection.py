"""Collections: `python -m zoo embed` into shards (exact rows, unreadable images skipped, resume, torchrun) and search."""

import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import zoo
from tests.weights_env import CORE, hub, write_meta_checkpoint  # noqa: F401 (fixture)
from zoo.__main__ import main
from zoo.collection import CollectionError, MappedRows, expand_inputs, top_k
from zoo.paths import weights_dir
from zoo.transforms import classification_transform
from zoo.weights import convert_checkpoint

SIZE = "64"  # T16 at 64 px keeps every run fast
REPO = Path(__file__).resolve().parents[1]


def png_bomb(path: Path, side: int = 20_000) -> None:
    """A tiny PNG whose header claims side x side pixels: PIL refuses it as a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture
def photos(hub, tmp_path):
    """T16 Core weights and a folder of images: good JPEGs/PNGs (one grayscale, one RGBA) and four unreadable files."""
    src = tmp_path / "src.pt"
    write_meta_checkpoint(CORE, src)
    convert_checkpoint(CORE, src, weights_dir())
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(7):
        h, w = 40 + 7 * i, 90 - 5 * i
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / ("sub" if i % 3 else "") / f"img{i}.jpg")
    Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8), "RGBA").save(folder / "sub" / "alpha.PNG")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG at all")
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    png_bomb(folder / "huge.png")
    (folder / "notes.png").write_text("a text file with an image name")
    (folder / "readme.txt").write_text("not an image: never picked from a folder")
    return folder


def dead_pid() -> int:
    """The id of a process that has ended (what a killed run's temporary files are named with)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


UNREADABLE = ("corrupt.jpg", "huge.png", "notes.png", "truncated.jpg")


def embed(*args: str) -> int:
    return main(["embed", CORE.name, *args, "--size", SIZE])


def reference(paths: list[str], clip: bool = False) -> np.ndarray:
    """The net's own rows for the same preprocessed images, one image at a time (no DataLoader, no batching)."""
    net, info = zoo.load_pretrained_model(CORE.name, inference=True, new_size=int(SIZE))
    transform = classification_transform(info.size, info.rgb_stats)
    with torch.no_grad():
        return torch.cat([(net.clip_embedding if clip else net.embedding)(transform(Image.open(p)).unsqueeze(0))
                          for p in paths]).numpy()


def test_embed_folder_exact_rows_and_errors(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert embed(str(photos), "--out", str(out), "--store-dtype", "float32", "--shard-size", "4",
                 "--batch-size", "3", "--workers", "2") == 0
    assert "9 embeddings in 4 shards, 4 unreadable images" in capsys.readouterr().out
    paths, rows = zoo.read_embeddings(out)
    expected = sorted(str(p) for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".png") and p.name not in UNREADABLE)
    assert paths == expected and isinstance(rows, MappedRows) and rows.shape == (9, 192) and rows.dtype == np.float32
    assert np.abs(np.asarray(rows) - reference(paths)).max() <= 1e-5
    errors = (out / "errors.txt").read_text().splitlines()
    assert [Path(line.split("\t")[0]).name for line in errors] == sorted(UNREADABLE)
    reasons = dict(line.split("\t") for line in errors)
    assert "decompression bomb" in reasons[str(photos / "huge.png")] and "truncated" in reasons[str(photos / "truncated.jpg")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 9 and manifest["errors"] == 4 and manifest["num_inputs"] == 13
    assert sum(s["rows"] for s in manifest["shards"]) == 9 and len(manifest["shards"]) == 4 and manifest["size"] == [64, 64]
    assert manifest["weights_sha256"] == zoo.weights.file_sha256(weights_dir() / CORE.weights.file)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_embed_clip_normalized_float16(photos, tmp_path):
    out = tmp_path / "out"
    assert embed(str(photos / "*.jpg"), "--out", str(out), "--what", "clip", "--normalize", "--workers", "0", "-q") == 0
    paths, rows = zoo.read_embeddings(out)
    assert [Path(p).name for p in paths] == ["img0.jpg", "img3.jpg", "img6.jpg"] and rows.dtype == np.float16
    expected = F.normalize(torch.from_numpy(reference(paths, clip=True)), dim=-1).numpy()
    assert rows.shape == (3, 512) and np.abs(rows[:].astype(np.float32) - expected).max() <= 1e-3


def test_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("b/2.jpg", "b/1.JPEG", "a.png", "b/c/3.webp", "b/skip.txt", "b/.hidden.jpg"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(b"")
    Path("list.txt").write_text("a.png\nmissing.jpg\n\nb/2.jpg\n")
    assert expand_inputs(["b"]) == ["b/1.JPEG", "b/2.jpg", "b/c/3.webp"]
    assert expand_inputs(["b/**/*.webp", "a.png", "b"]) == ["b/c/3.webp", "a.png", "b/1.JPEG", "b/2.jpg"]
    assert expand_inputs(["@list.txt", "a.png"]) == ["a.png", "missing.jpg", "b/2.jpg"]
    assert expand_inputs(["b/c/"]) == ["b/c/3.webp"]  # a trailing separator: the same folder
    for spec, message in (("nope.jpg", "no such file or folder: 'nope.jpg'"), ("b/*.gif", "matches no image files"),
                          ("@none.txt", "cannot read the list file")):
        with pytest.raises(ValueError, match=message):
            expand_inputs([spec])
    Path("empty").mkdir()
    with pytest.raises(ValueError, match="folder 'empty' holds no images"):
        expand_inputs(["empty"])


def test_resume_redoes_only_missing_shards(photos, tmp_path, capsys):
    args = [str(photos), "--shard-size", "2", "--batch-size", "2", "--workers", "0", "-q"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert embed(*args, "--out", str(full)) == 0 and embed(*args, "--out", str(cut)) == 0
    # a run stopped at three different points: shard 1 never written, shard 3 rows without its commit mark,
    # shard 5 half-written into a temporary, and no manifest yet
    (cut / "shard-00001.npy").unlink()
    (cut / "shard-00001.json").unlink()
    (cut / "shard-00003.json").unlink()
    (cut / "shard-00003.npy").write_bytes(b"partial")
    (cut / f".shard-00005.npy.{dead_pid()}.ab12cd34.tmp").write_bytes(b"partial")
    np.save(cut / "shard-00004.npy", np.zeros((1, 192), np.float16))  # rows that do not match their record
    (cut / "manifest.json").unlink()
    (cut / "errors.txt").unlink()
    with pytest.raises(CollectionError, match="unfinished collection"):
        zoo.read_embeddings(cut)
    kept = {p.name: p.stat().st_mtime_ns for p in cut.glob("shard-*") if p.stem not in ("shard-00001", "shard-00003", "shard-00004")}
    assert embed(*args, "--out", str(cut)) == 0
    assert {p.name: p.stat().st_mtime_ns for p in cut.glob("shard-*") if p.name in kept} == kept
    assert sorted(os.listdir(cut)) == sorted(os.listdir(full))
    for name in os.listdir(full):
        if name != "manifest.json":
            assert (cut / name).read_bytes() == (full / name).read_bytes(), name
    assert json.loads((cut / "manifest.json").read_text()) == json.loads((full / "manifest.json").read_text())


def test_other_settings_refused(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert embed(str(photos), "--out", str(out), "--workers", "0", "-q") == 0
    assert embed(str(photos), "--out", str(out), "--workers", "0", "-q") == 0  # complete: nothing to do
    for extra, diff in ((["--normalize"], "normalize False there, True asked"),
                        (["--store-dtype", "float32"], "store_dtype 'float16' there, 'float32' asked"),
                        (["--shard-size", "3"], "shard_size 10000 there, 3 asked")):
        assert embed(str(photos), "--out", str(out), "--workers", "0", *extra) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and diff in err and "choose a new --out folder" in err
    assert embed(str(photos / "sub"), "--out", str(out), "--workers", "0") == 1
    assert "num_inputs 13 there, 5 asked" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    assert embed(str(photos), "--out", str(tmp_path / "other"), "--workers", "0") == 1
    assert "holds no pe-zoo collection" in capsys.readouterr().err
    assert main(["embed", "rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial", str(photos), "--out", str(tmp_path / "s"),
                 "--what", "clip"]) == 1
    assert "--what clip needs a PE-Core model" in capsys.readouterr().err


def test_process_group_path(photos, tmp_path, monkeypatch):
    """The torch.distributed path (gloo, barriers, rank 0 writes the manifest) in one process."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29517")
    assert embed(str(photos), "--out", str(tmp_path / "one"), "--shard-size", "3", "--workers", "0", "-q") == 0
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    try:
        assert embed(str(photos), "--out", str(tmp_path / "pg"), "--shard-size", "3", "--workers", "0", "-q") == 0
    finally:
        torch.distributed.destroy_process_group()
    for name in os.listdir(tmp_path / "one"):
        assert (tmp_path / "pg" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(photos, tmp_path):
    args = [CORE.name, str(photos), "--size", SIZE, "--shard-size", "2", "--batch-size", "2", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "zoo", "embed", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "zoo", "embed",
                          *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert "7 shards over 2 processes, 4 to write here" in two.stderr  # rank 0 writes shards 0, 2, 4, 6
    paths1, rows1 = zoo.read_embeddings(tmp_path / "one")
    paths2, rows2 = zoo.read_embeddings(tmp_path / "two")
    assert paths1 == paths2 and len(paths1) == 9 and np.array_equal(np.asarray(rows1), np.asarray(rows2))
    assert (tmp_path / "one" / "errors.txt").read_text() == (tmp_path / "two" / "errors.txt").read_text()


def brute_force(rows: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    x, q = rows.astype(np.float64), q.astype(np.float64)
    norms = np.linalg.norm(x, axis=1)
    scores = x @ q / np.where(norms > 0, norms, 1) / np.linalg.norm(q)
    order = sorted(range(len(x)), key=lambda i: (-scores[i], i))[:k]
    return scores[order], np.array(order)


def test_top_k_matches_brute_force():
    rng = np.random.default_rng(3)
    shards = [rng.standard_normal((n, 24)).astype(np.float16) for n in (700, 0, 5, 1300)]
    shards[3][17] = 0  # a zero row scores 0
    shards[3][[5, 9, 400]] = shards[0][[8, 8, 8]]  # ties across and within shards: the lower row ranks first
    shards[0][[2, 3]] = 2 * shards[0][8]
    rows = MappedRows(shards, 24, np.float16)
    whole = np.concatenate(shards)
    for k, q in ((1, rng.standard_normal(24)), (10, rng.standard_normal(24)), (3000, rng.standard_normal(24)),
                 (4, shards[0][8]), (2, -shards[0][8])):
        scores, index = top_k(rows, q, k)
        ref_scores, ref_index = brute_force(whole, q, k)
        assert len(index) == min(k, 2005) and np.array_equal(index, ref_index)
        assert np.abs(scores - ref_scores).max() < 1e-5
    assert list(top_k(rows, shards[0][8], 6)[1]) == [2, 3, 8, 710, 714, 1105]
    assert np.array_equal(rows[[3, 701, 2004]], whole[[3, 701, 2004]]) and np.array_equal(rows[690:710], whole[690:710])
    assert np.array_equal(rows[-1], whole[-1]) and rows[5, :3].shape == (3,) and np.asarray(rows).shape == (2005, 24)
    with pytest.raises(ValueError, match="the query has 3 values but the collection's rows have 24"):
        top_k(rows, np.ones(3), 1)


def test_search_by_image_and_vector(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert embed(str(photos), "--out", str(out), "--shard-size", "3", "--workers", "0", "-q") == 0
    paths, rows = zoo.read_embeddings(out)
    for i in (0, 5, 7):
        hits = zoo.search(out, image=paths[i], k=3)
        assert hits[0].path == paths[i] and hits[0].row == i and hits[0].score > 0.999 and [h.rank for h in hits] == [1, 2, 3]
        assert zoo.search(out, rows[i], k=1)[0].path == paths[i]
    assert main(["search", str(out), "--image", paths[2], "-k", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["hits"]
    assert len(result) == 4 and result[0]["path"] == paths[2] and set(result[0]) == {"rank", "score", "path", "row"}
    assert main(["search", str(out), "--image", paths[2], "-k", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["1", f"{result[0]['score']:.4f}", paths[2]]
    assert main(["search", str(out), "--text", "a red bicycle"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds 'embedding' rows" in err and "--what clip" in err
    assert main(["search", str(tmp_path), "--image", paths[0]]) == 1
    assert "holds no pe-zoo collection" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(photos, tmp_path):
    """A real `kill -9` in the middle of a run, then the same command: the same folder as a run never stopped."""
    for i in range(40):  # more images, one per shard, so that the kill lands mid-run
        Image.fromarray(np.full((32, 32, 3), i * 6, np.uint8)).save(photos / f"extra{i:02d}.jpg")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "zoo", "embed", CORE.name, str(photos), "--size", SIZE, "--shard-size", "1",
           "--batch-size", "1", "--workers", "1", "-q", "--out"]
    assert subprocess.run([*cmd, str(tmp_path / "full")], env=env).returncode == 0
    run = subprocess.Popen([*cmd, str(tmp_path / "cut")], env=env)
    while not (tmp_path / "cut" / "shard-00003.json").exists() and run.poll() is None:
        time.sleep(0.01)
    run.kill()
    run.wait()
    assert not (tmp_path / "cut" / "manifest.json").exists(), "the run finished before it could be killed"
    assert subprocess.run([*cmd, str(tmp_path / "cut")], env=env).returncode == 0
    assert sorted(os.listdir(tmp_path / "cut")) == sorted(os.listdir(tmp_path / "full"))
    for name in os.listdir(tmp_path / "full"):
        if name != "manifest.json":
            assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


@pytest.mark.slow
def test_search_by_text_matches_open_clip(hub, tmp_path):
    """A text query goes through the collection's PE-Core text tower: the ranking equals open_clip's query
    against the stored rows (full-size synthetic T16 CLIP weights)."""
    import open_clip

    from tests.test_clip_load import open_clip_model
    from zoo.testing.synthetic import meta_clip_state_dict
    from zoo.weights import convert_text_checkpoint

    state = meta_clip_state_dict(CORE.config, CORE.text, seed=5, dtype=torch.bfloat16)
    torch.save(state, tmp_path / "clip.pt")
    convert_checkpoint(CORE, tmp_path / "clip.pt", weights_dir())
    convert_text_checkpoint(CORE, tmp_path / "clip.pt", weights_dir())
    rng = np.random.default_rng(1)
    (tmp_path / "p").mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "p" / f"{i}.png")
    out = tmp_path / "out"
    assert embed(str(tmp_path / "p"), "--out", str(out), "--what", "clip", "--store-dtype", "float32", "--workers", "0") == 0
    hits = zoo.search(out, text="a red bicycle", k=8)
    ref = open_clip_model(state)
    with torch.no_grad():
        q = ref.encode_text(open_clip.get_tokenizer("PE-Core-T-16-384")(["a red bicycle"]))[0].numpy()
    paths, rows = zoo.read_embeddings(out)
    ref_scores, ref_index = brute_force(np.asarray(rows), q, 8)
    assert [h.path for h in hits] == [paths[i] for i in ref_index]
    assert np.abs(np.array([h.score for h in hits]) - ref_scores).max() < 1e-4
