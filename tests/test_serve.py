"""`python -m zoo serve`: the JSON API, the image route (no way out of the collection), batching, the page in Chromium."""

import asyncio
import dataclasses
import io
import json
import logging
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from tests.weights_env import CORE
from zoo.__main__ import main
from zoo.nets.text import TextConfig
from zoo.paths import weights_dir
from zoo.registry import load_registry
from zoo.testing.hub_cache import use_cache
from zoo.testing.synthetic import meta_clip_state_dict
from zoo.weights import convert_checkpoint, convert_text_checkpoint

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
from fastapi.testclient import TestClient  # noqa: E402

from zoo.serve import create_app  # noqa: E402

# the real tokenizer's vocabulary with a one-layer, narrow text tower: text queries in a second, not fifteen
TEXT = TextConfig(width=64, depth=1, heads=2, mlp_dim=128, context_length=32, vocab_size=49408)
CHROMIUM = Path("/usr/bin/chromium")
SECRET = "top secret, never served"


@pytest.fixture(scope="module")
def collection(module_tmp):
    """A CLIP collection of 14 images (T16 Core cut to 2 blocks at 64 px, a narrow text tower), indexed, beside a secret file."""
    entry = dataclasses.replace(CORE, text=TEXT, config=dataclasses.replace(CORE.config, depth=2))
    with pytest.MonkeyPatch.context() as mp, use_cache(module_tmp / "hub", offline=True):
        mp.setenv("ZOO_HOME", str(module_tmp / "home"))
        mp.setitem(load_registry(), CORE.name, entry)
        torch.save(meta_clip_state_dict(entry.config, TEXT, seed=3), module_tmp / "clip.pt")
        convert_checkpoint(entry, module_tmp / "clip.pt", weights_dir())
        convert_text_checkpoint(entry, module_tmp / "clip.pt", weights_dir())
        rng = np.random.default_rng(0)
        photos = module_tmp / "photos"
        photos.mkdir()
        for i in range(14):
            Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 56, 3), dtype=np.uint8)).save(photos / f"p{i:02d}.jpg")
        (module_tmp / "secret.txt").write_text(SECRET)
        out = module_tmp / "out"
        assert main(["embed", CORE.name, str(photos), "--out", str(out), "--size", "64", "--what", "clip",
                     "--shard-size", "5", "--workers", "0", "-q"]) == 0
        assert main(["index", str(out), "-q"]) == 0
        yield out


@pytest.fixture(scope="module")
def client(collection):
    with TestClient(create_app(collection)) as c:
        yield c


def brute_force_rows(collection: Path, q: np.ndarray, k: int) -> list[int]:
    rows = np.asarray(zoo.read_embeddings(collection)[1], dtype=np.float64)
    scores = rows @ q / np.linalg.norm(rows, axis=1) / np.linalg.norm(q)
    return np.lexsort((np.arange(len(rows)), -scores))[:k].tolist()


def test_search_endpoints(collection, client, caplog):
    paths, rows = zoo.read_embeddings(collection)
    caplog.set_level(logging.INFO, logger="zoo")
    r = client.get("/search", params={"image_row": 6, "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["method"] == "index" and body["reason"] is None
    assert [h["rank"] for h in body["results"]] == [1, 2, 3, 4, 5]
    assert [h["row"] for h in body["results"]] == brute_force_rows(collection, np.asarray(rows[6], np.float64), 5)
    assert body["results"][0] == {"rank": 1, "score": pytest.approx(1.0, abs=1e-5), "path": paths[6], "row": 6}
    assert '"GET /search?image_row=6&k=5" 200' in caplog.text  # every request is logged
    r = client.get("/search", params={"text": "a red bicycle", "k": 14})
    hits = zoo.search(collection, text="a red bicycle", k=14, exact=True)
    assert [h["row"] for h in r.json()["results"]] == [h.row for h in hits]
    assert np.allclose([h["score"] for h in r.json()["results"]], [h.score for h in hits], atol=1e-5)
    r = client.post("/search", files={"image": ("q.jpg", Path(paths[9]).read_bytes(), "image/jpeg")}, data={"k": "3"})
    assert r.status_code == 200 and r.json()["results"][0]["row"] == 9 and len(r.json()["results"]) == 3
    assert client.get("/info").json() == {"model": CORE.name, "rows": 14, "what": "clip", "text": True,
                                           "method": "index", "reason": None}
    for params, message in (({"text": "x", "image_row": 1}, "exactly one"), ({}, "exactly one"),
                            ({"image_row": 14}, "not in 0..13"), ({"image_row": -1}, "not in 0..13"),
                            ({"image_row": "one"}, "image_row"), ({"text": "a", "k": 0}, "k must be"),
                            ({"text": "  "}, "empty")):
        r = client.get("/search", params=params)
        assert r.status_code == 400 and message in r.json()["error"], (params, r.text)
    r = client.post("/search", files={"image": ("q.jpg", b"no image at all", "image/jpeg")})
    assert r.status_code == 400 and "cannot read the uploaded image" in r.json()["error"]


def test_cli_search_json_uses_the_index(collection, capsys):
    """The end-to-end path: `zoo embed` and `zoo index` (the fixture), then `zoo search --json`."""
    paths, rows = zoo.read_embeddings(collection)
    assert json.loads((collection / "index.json").read_text())["kind"] == "flat"
    assert main(["search", str(collection), "--image", paths[4], "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "index" and result["reason"] is None and result["hits"][0]["path"] == paths[4]
    assert [h["row"] for h in result["hits"]] == brute_force_rows(collection, np.asarray(rows[4], np.float64), 3)
    exact = zoo.search(collection, rows[4], k=3, exact=True)
    assert exact.method == "exact" and exact.reason == "--exact asked" and [h.row for h in exact] == [h["row"] for h in result["hits"]]


def test_images_and_nothing_else(collection, client):
    paths, _ = zoo.read_embeddings(collection)
    r = client.get("/image/3")
    assert r.status_code == 200 and r.content == Path(paths[3]).read_bytes() and r.headers["content-type"] == "image/jpeg"
    r = client.get("/image/3", params={"size": 32})
    thumb = Image.open(io.BytesIO(r.content))
    assert thumb.format == "JPEG" and max(thumb.size) == 32
    assert client.get("/image/3", params={"size": 100_000}).status_code == 400
    for path in ("/image/14", "/image/-1", "/image/99999999999999999999", "/image/1.5", "/image/0x1", "/image/",
                 "/image/%2e%2e%2fsecret.txt", "/image/..%2F..%2Fsecret.txt", "/image/3/../../secret.txt",
                 "/image/%2e%2e/%2e%2e/secret.txt", "/secret.txt", "/out/shard-00000.json", "/image/3%00.txt"):
        r = client.get(path)
        assert r.status_code in (400, 404, 405), path
        assert SECRET not in r.text and "paths" not in r.text and not r.headers["content-type"].startswith("image/"), path


def test_queries_arriving_together_are_batched(collection, client):
    import httpx

    app = client.app
    transport = httpx.ASGITransport(app=app)

    async def many() -> list[dict]:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            answers = await asyncio.gather(*(c.get("/search", params={"image_row": i, "k": 4}) for i in range(8)))
        return [a.json() for a in answers]

    answers = asyncio.run(many())
    assert [a["results"][0]["row"] for a in answers] == list(range(8))
    assert max(app.state.batcher.batches[-8:]) > 1  # at least two queries ran in one batch
    for i, a in enumerate(answers):  # a batched answer equals the answer alone
        assert a == client.get("/search", params={"image_row": i, "k": 4}).json()


def raw_get(port: int, path: str) -> bytes:
    """One HTTP request exactly as written (no client normalises the path), the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.fixture(scope="module")
def live(collection):
    """uvicorn serving the collection on a free loopback port, in a thread."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(collection), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def test_raw_traversal_over_the_wire(live):
    for path in ("/image/../secret.txt", "/image/../../etc/passwd", "/image/%2e%2e/secret.txt", "/image/..%2fsecret.txt",
                 "/image/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "/image/-1", "/image/14", "/../secret.txt", "/image/0/..%5c..%5csecret.txt"):
        answer = raw_get(live, path)
        status = int(answer.split(b" ", 2)[1])
        assert status in (400, 404), (path, answer[:200])
        assert SECRET.encode() not in answer and b"root:" not in answer
    assert raw_get(live, "/image/0").startswith(b"HTTP/1.1 200")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_page_in_chromium(collection, live, tmp_path):
    expected = [h["row"] for h in TestClient(create_app(collection)).get("/search", params={"text": "a red bicycle", "k": 40}).json()["results"]]
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--window-size=1000,700"]
    url = f"http://127.0.0.1:{live}/?q=a%20red%20bicycle"
    dom = subprocess.run([*command, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    shown = [int(r) for r in re.findall(r'<img src="/image/(\d+)\?size=256"', dom)]
    assert shown == expected and len(shown) == 14, dom[-2000:]
    assert "14 results for “a red bicycle” (index)" in dom
