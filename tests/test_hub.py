"""Hub repos by id, end to end through real huggingface_hub against a local stand-in for the Hub's HTTP API:
``converters.publish`` and ``zoo.push_to_hub`` (a fine-tuned net with a head) upload, then
``zoo.load_pretrained_model("hf-hub:ORG/REPO")`` downloads and verifies; every request names pe-zoo."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import zoo
from tests.test_publish import NAME, FakeHub, weights  # noqa: F401  (weights: the module's fixture)
from zoo.hub import PublishError, push_to_hub
from zoo.testing.hub_cache import add_file, use_cache

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "c" * 40


class StoringHub(FakeHub):
    """The upload routes of ``FakeHub``, keeping each committed file, plus the download route
    (``/{org}/{name}/resolve/{revision}/{file}``, HEAD and GET) that ``hf_hub_download`` uses."""

    files: dict[tuple[str, str], bytes] = {}
    agents: list[tuple[str, str, str]] = []  # (method, path, User-Agent)

    def do_POST(self) -> None:
        self.agents.append(("POST", self.path, self.headers.get("User-Agent", "")))
        if self.path.endswith("/commit/main"):
            repo = self.path.split("/api/models/")[1].rsplit("/commit/", 1)[0]
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[(repo, item["value"]["path"])] = base64.b64decode(item["value"]["content"])
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            self._reply(200, {"commitUrl": f"{base}/{repo}/commit/{COMMIT}", "commitOid": COMMIT})
            return
        super().do_POST()

    def _serve(self, with_body: bool) -> None:
        self.agents.append(("HEAD" if not with_body else "GET", self.path, self.headers.get("User-Agent", "")))
        parts = self.path.split("/")
        if len(parts) < 6 or parts[3] != "resolve":
            return self._reply(404, {"error": "not served here"})
        data = self.files.get((f"{parts[1]}/{parts[2]}", "/".join(parts[5:])))
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._serve(False)

    def do_GET(self) -> None:
        self._serve(True)


@pytest.fixture
def hub():
    StoringHub.files.clear()
    StoringHub.agents.clear()
    StoringHub.requests.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), StoringHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_py(code: str, tmp: Path, endpoint: str) -> subprocess.CompletedProcess:
    """Python in a fresh process pointed at the stand-in Hub (huggingface_hub reads its endpoint at import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(tmp / "hf_home"), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1", HF_TOKEN="hf_test",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_converters_publish_then_load_by_repo_id(weights, hub, tmp_path):  # noqa: F811
    vision = tmp_path / "vision"  # the vision file only: the text tower would add 250 MB of upload
    vision.mkdir()
    (vision / f"{NAME}.safetensors").symlink_to(weights / f"{NAME}.safetensors")
    weights = vision
    r = run_py(f"""
        import json, torch, zoo
        from converters.publish import main
        assert main([{NAME!r}, "--repo-id", "someone/pe-t16", "--weights-dir", {str(weights)!r}]) == 0
        net, info = zoo.load_pretrained_model("hf-hub:someone/pe-t16", inference=True, new_size=(32, 48))
        ref, _ = zoo.load_pretrained_model({NAME!r}, inference=True, weights_dir={str(weights)!r}, new_size=(32, 48))
        x = torch.randn(2, 3, 32, 48)
        print(json.dumps({{"same": torch.equal(net(x), ref(x)), "weights": str(info.weights), "size": info.size,
                           "cfg": net.pretrained_cfg["input_size"], "name": info.name,
                           "version": zoo.__version__}}))
    """, tmp_path, hub)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["same"] and out["name"] == NAME and out["size"] == [32, 48] and out["cfg"] == [3, 32, 48]
    assert out["weights"].startswith(str(tmp_path / "hf_home"))  # downloaded into the Hub cache
    downloads = [(m, p, a) for m, p, a in StoringHub.agents if "/resolve/" in p]
    assert {p.rsplit("/", 1)[1] for _, p, _ in downloads} >= {"config.json", f"{NAME}.safetensors"}
    # every request for the repo, uploads and downloads, identifies the library and its version to the Hub
    ours = [(m, p, a) for m, p, a in StoringHub.agents if "someone/pe-t16" in p or p == "/api/repos/create"]
    assert {m for m, _, _ in ours} == {"HEAD", "GET", "POST"} and len(ours) >= 6
    assert all(a.startswith(f"pe-zoo/{out['version']}; hf_hub/") for _, _, a in ours), ours


def test_push_to_hub_a_fine_tuned_net_and_load_it_back(weights, hub, tmp_path):  # noqa: F811
    r = run_py(f"""
        import dataclasses, json, torch, zoo
        net, info = zoo.load_pretrained_model({NAME!r}, weights_dir={str(weights)!r})
        net.reset_classifier(3)
        with torch.no_grad():
            net.head.weight.normal_(); net.blocks[0].mlp.fc1.bias.add_(0.5)  # "fine-tuned"
        info = dataclasses.replace(info, class_to_idx={{"cat": 0, "dog": 1, "bird": 2}})
        url = zoo.push_to_hub(net, info, "someone/pe-t16-birds", private=True)
        back, back_info = zoo.load_pretrained_model("hf-hub:someone/pe-t16-birds", inference=True)
        x = torch.randn(2, 3, 384, 384)
        net.eval()
        with torch.no_grad():
            same = torch.equal(back(x), net(x))
        print(json.dumps({{"url": url, "same": same, "classes": back_info.class_to_idx, "num_classes": back.num_classes,
                           "out": back_info.signature["outputs"][0]["data_shape"], "cfg": back.pretrained_cfg}}))
    """, tmp_path, hub)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["url"] == f"{hub}/someone/pe-t16-birds"
    assert out["same"] and out["num_classes"] == 3 and out["out"] == [0, 3]
    assert out["classes"] == {"cat": 0, "dog": 1, "bird": 2} and out["cfg"]["num_classes"] == 3
    create = next(json.loads(b) for p, _, b in StoringHub.requests if p == "/api/repos/create")
    assert create["visibility"] == "private"
    files = {p: d for (repo, p), d in StoringHub.files.items() if repo == "someone/pe-t16-birds"}
    assert sorted(files) == ["README.md", "config.json", f"{NAME}.safetensors"]
    config = json.loads(files["config.json"])
    assert config["num_classes"] == 3 and config["pretrained_cfg"]["input_size"] == [3, 384, 384]
    assert config["sha256"][f"{NAME}.safetensors"] == hashlib.sha256(files[f"{NAME}.safetensors"]).hexdigest()
    (tmp_path / "README.md").write_bytes(files["README.md"])
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "pe-zoo" and card.data.base_model == "facebook/PE-Core-T16-384"
    assert 'zoo.load_pretrained_model("hf-hub:someone/pe-t16-birds"' in card.text and "3-class" in card.text


def _cache_repo(tmp: Path, repo: str, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        add_file(tmp / "hub", repo, name, tmp / name)
    return tmp / "hub"


def test_hub_repo_with_changed_weights_is_refused(weights, tmp_path):  # noqa: F811
    """A weights file that is not the one config.json names (by sha256) is never loaded."""
    from zoo.hub import hub_config
    from zoo.registry import get_entry

    entry = get_entry(NAME)
    data = (weights / entry.weights.file).read_bytes()
    config = hub_config(entry, {entry.weights.file: "0" * 64})
    cache = _cache_repo(tmp_path, "someone/bad", {"config.json": json.dumps(config).encode(), entry.weights.file: data})
    with use_cache(cache, offline=True), pytest.raises(zoo.weights.WeightsIntegrityError) as e:
        zoo.load_pretrained_model("hf-hub:someone/bad")
    msg = str(e.value)
    assert "expects 0000" in msg and "hf download someone/bad" in msg and "--force-download" in msg and "\n" not in msg


def test_hub_repo_errors_are_one_line(tmp_path):
    with use_cache(tmp_path / "empty", offline=True):
        with pytest.raises(zoo.weights.WeightsNotFoundError, match="cannot get config.json of the Hub repo someone/none"):
            zoo.load_pretrained_model("hf-hub:someone/none")
    cache = _cache_repo(tmp_path, "someone/other", {"config.json": b'{"name": "x"}'})
    with use_cache(cache, offline=True):
        with pytest.raises(zoo.weights.WeightsIntegrityError, match="not a pe-zoo repo: its config.json lacks family"):
            zoo.load_pretrained_model("hf-hub:someone/other")


def test_push_to_hub_refuses_before_any_request(tmp_path, monkeypatch):
    net = zoo.create_model(NAME, device="meta")
    info = zoo.ModelInfo(NAME, "core", {}, {}, (384, 384), (384, 384), 192, 16, tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    with pytest.raises(PublishError, match="ORG/REPO"):
        push_to_hub(net, info, "no-slash")
    with pytest.raises(PublishError, match="zoo PEViT nets, got Linear"):
        push_to_hub(torch.nn.Linear(1, 1), info, "a/b")
    with pytest.raises(PublishError, match="on the meta device"):
        push_to_hub(net, info, "a/b")


# ------------------------------------------------------------------------------ a tiny repo, published at a non-native size
TINY_STATS = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25]}


@pytest.fixture(scope="module")
def tiny_repo(module_tmp):
    """A 1-block net (not a registry entry), native 64x64, published by push_to_hub at 32x48: the staged files."""
    from zoo.registry import get_entry
    from zoo.testing.hub_cache import use_cache

    cfg = dataclasses.replace(get_entry(NAME).config, width=64, depth=1, heads=2, mlp_dim=128, image_size=64, clip_dim=32)
    torch.manual_seed(0)
    net = zoo.PEViT(cfg)
    info = zoo.ModelInfo("tiny-pe", "core", TINY_STATS, {}, (32, 48), (64, 64), 64, 16, module_tmp)
    stage = module_tmp / "staged"
    saved = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = "hf_x"
    try:
        with use_cache(module_tmp / "no-cache", offline=True), pytest.raises(PublishError):  # staged, then the upload fails offline
            push_to_hub(net, info, "someone/tiny", stage_dir=stage)
    finally:
        os.environ.pop("HF_TOKEN") if saved is None else os.environ.__setitem__("HF_TOKEN", saved)
    return net.eval(), stage


def _tiny_cache(tmp_path, stage, edit=None):
    config = json.loads((stage / "config.json").read_text())
    if edit is not None:
        edit(config)
    weights = {p.name: p.read_bytes() for p in stage.glob("*.safetensors")}
    return _cache_repo(tmp_path, "someone/tiny", {"config.json": json.dumps(config).encode(), **weights})


def test_a_net_pushed_at_a_non_native_size_loads_back_at_that_size(tiny_repo, tmp_path):
    """issue 23: the size recorded in config.json (32x48) is the size loaded back, not the native 64x64."""
    net, stage = tiny_repo
    with use_cache(_tiny_cache(tmp_path, stage), offline=True):
        back, info = zoo.load_pretrained_model("hf-hub:someone/tiny", inference=True)
        _, wider = zoo.load_pretrained_model("hf-hub:someone/tiny", new_size=64)
    assert info.size == (32, 48) and info.native_size == (64, 64) and wider.size == (64, 64)
    assert back.pretrained_cfg["input_size"] == (3, 32, 48) and back.pretrained_cfg["mean"] == tuple(TINY_STATS["mean"])
    assert info.rgb_stats == TINY_STATS and info.signature["inputs"] == [{"data_shape": [0, 3, 32, 48]}]
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))


def _set_arch(key, value):
    return lambda c: c["architecture"].__setitem__(key, value)


@pytest.mark.parametrize("edit, problem", [
    (lambda c: c.update(num_classes=0, class_to_idx={"a": 0, "b": 1}), "num_classes is 0 but class_to_idx names 2"),
    (_set_arch("patch_size", 0), "patch_size must be a positive integer"),
    (_set_arch("heads", 0), "heads must be a positive integer"),
    (lambda c: c.update(sha256="abc"), "sha256 must map file names"),
    (lambda c: c.update(name=5), "name must be a non-empty string"),
    (lambda c: c.update(num_classes=2, class_to_idx={"a": 0, "b": 0}), "duplicate or out-of-range"),
    (lambda c: c["signature"]["inputs"][0].update(data_shape=[0, 3, 30, 48]), "not two positive multiples of the patch size 16"),
    (lambda c: c.update(weights_file="../../x.safetensors"), "plain \\*.safetensors file name"),
], ids=["classes-without-head", "patch-0", "heads-0", "sha256-string", "name-int", "duplicate-index", "bad-size", "weights-path"])
def test_hostile_hub_configs_are_one_line_errors(edit, problem, tiny_repo, tmp_path):
    """issue 21: a config.json that lies or is malformed is refused with one line, never a traceback or a wrong net."""
    from zoo.cli import USER_ERRORS

    with use_cache(_tiny_cache(tmp_path, tiny_repo[1], edit), offline=True), pytest.raises(USER_ERRORS, match=problem) as e:
        zoo.load_pretrained_model("hf-hub:someone/tiny")
    assert "\n" not in str(e.value) and "someone/tiny" in str(e.value)
