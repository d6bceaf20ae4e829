"""python -m converters.publish: dry run end to end, every error up to the first network call, and a full
upload through huggingface_hub against a local stand-in for the Hub's HTTP API."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors import safe_open

import zoo
from converters.publish import PublishError, checked_weights, main
from zoo.cards import render_card
from zoo.weights import convert_checkpoint
from zoo.weights.convert_text import convert_text_checkpoint, text_weights_file
from zoo.testing.hub_cache import add_file, use_cache
from zoo.loader import load_entry
from zoo.registry import get_entry
from zoo.testing.synthetic import meta_clip_state_dict

NAME = "rope_i_vit_t16_pn_aps_c1_pe-core"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def weights(module_tmp) -> Path:
    """A folder with the converted weights of NAME, made from a synthetic Meta checkpoint."""
    tmp = module_tmp
    entry = get_entry(NAME)
    src = tmp / entry.source.file
    torch.save(meta_clip_state_dict(entry.config, entry.text, seed=3), src)
    convert_checkpoint(entry, src, tmp / "weights")
    convert_text_checkpoint(entry, src, tmp / "weights")
    return tmp / "weights"


def run_cli(args: list[str], tmp: Path, **env: str) -> subprocess.CompletedProcess:
    """The publisher in a fresh process, with a Hugging Face home of its own (no login there)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    base.update(HF_HOME=str(tmp / "hf_home"), **env)
    return subprocess.run([sys.executable, "-m", "converters.publish", *args], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=120)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dry_run_stages_weights_config_and_card(weights, tmp_path):
    stage = tmp_path / "stage"
    r = run_cli([NAME, "--repo-id", "someone/pe-t16", "--weights-dir", str(weights), "--dry-run",
                 "--stage-dir", str(stage)], tmp_path)
    assert r.returncode == 0, r.stderr
    entry = get_entry(NAME)
    assert sorted(p.name for p in stage.iterdir()) == sorted(["README.md", "config.json", entry.weights.file, text_weights_file(entry)])
    assert "note:" not in r.stdout
    for p in stage.iterdir():  # every staged file is listed with its size and sha256
        line = next(line for line in r.stdout.splitlines() if line.strip().startswith(p.name))
        assert f"{p.stat().st_size:,d} bytes" in line and sha256(p) in line
    assert "nothing uploaded" in r.stdout
    staged = stage / entry.weights.file
    assert staged.stat().st_ino == (weights / entry.weights.file).stat().st_ino  # hard-linked, not copied
    with safe_open(staged, framework="pt") as f:
        assert f.metadata()["name"] == NAME and len(f.keys()) == len(zoo.create_model(NAME, device="meta").state_dict())
    cfg = json.loads((stage / "config.json").read_text())
    assert cfg["name"] == NAME and cfg["zoo_version"] == zoo.__version__
    assert zoo.PEConfig.from_dict(cfg["architecture"]) == entry.config
    assert cfg["signature"] == {"inputs": [{"data_shape": [0, 3, 384, 384]}], "outputs": [{"data_shape": [0, 192]}]}
    assert cfg["rgb_stats"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    pre = cfg["preprocessing"]
    assert (pre["resize_mode"], pre["interpolation"], pre["color_mode"]) == ("squash", "bilinear", "RGB")
    # the recipe, followed by hand with PIL and numpy, gives what zoo.classification_transform gives
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 130, 4), dtype=np.uint8), "RGBA")
    h, w = pre["resize"]
    by_hand = np.asarray(image.convert(pre["color_mode"]).resize((w, h), Image.BILINEAR), dtype=np.float32)
    by_hand = (by_hand * pre["rescale_factor"] - np.float32(pre["mean"])) / np.float32(pre["std"])
    x = zoo.classification_transform(zoo.get_size_from_signature(cfg["signature"]), cfg["rgb_stats"])(image)
    torch.testing.assert_close(x, torch.from_numpy(by_hand).permute(2, 0, 1), rtol=0, atol=1e-5)
    readme = (stage / "README.md").read_text()
    assert readme == render_card(NAME)
    card = ModelCard.load(stage / "README.md")
    assert card.data.base_model == "facebook/PE-Core-T16-384" and card.data.library_name == "pe-zoo"


def test_missing_token_stops_before_the_hub(weights, tmp_path):
    r = run_cli([NAME, "--repo-id", "someone/pe-t16", "--weights-dir", str(weights)], tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["error: no Hugging Face token: set HF_TOKEN or log in with `hf auth login`"]


def test_hub_error_is_one_line_and_never_shows_the_token(weights, tmp_path):
    # offline mode makes huggingface_hub refuse the first request (create_repo): a real Hub error, no network
    token = "hf_NotARealTokenButSecret123"
    r = run_cli([NAME, "--repo-id", "someone/pe-t16", "--weights-dir", str(weights), "--private"], tmp_path,
                HF_TOKEN=token, HF_HUB_OFFLINE="1")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the Hugging Face Hub refused or failed the upload to someone/pe-t16")
    assert "OfflineModeIsEnabled" in lines[0]
    assert token not in r.stdout + r.stderr
    assert "published" not in r.stdout


def test_missing_weights_names_the_file_and_the_converter(tmp_path, capsys):
    assert main([NAME, "--repo-id", "someone/pe-t16", "--weights-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(tmp_path / get_entry(NAME).weights.file) in err[0]
    assert "python -m converters.pe_core --variant T16" in err[0]


def test_bad_repo_id_and_unknown_name(weights, capsys):
    assert main([NAME, "--repo-id", "no-slash", "--weights-dir", str(weights), "--dry-run"]) == 1
    assert "ORG/REPO" in capsys.readouterr().err
    assert main(["rope_i_vit_t16_pe-core", "--repo-id", "a/b", "--dry-run"]) == 1
    assert NAME in capsys.readouterr().err  # the closest names are suggested


def test_registry_sha256_is_enforced(weights):
    entry = get_entry(NAME)
    actual = sha256(weights / entry.weights.file)
    good = dataclasses.replace(entry, weights=dataclasses.replace(entry.weights, sha256=actual))
    assert checked_weights(good, weights) == weights / entry.weights.file
    bad = dataclasses.replace(entry, weights=dataclasses.replace(entry.weights, sha256="0" * 64))
    with pytest.raises(PublishError, match=f"has sha256 {actual} but registry.yaml expects 0000"):
        checked_weights(bad, weights)


def test_core_without_text_file_publishes_the_vision_tower_with_a_note(weights, tmp_path, capsys):
    (tmp_path / get_entry(NAME).weights.file).symlink_to(weights / get_entry(NAME).weights.file)
    assert main([NAME, "--repo-id", "a/b", "--weights-dir", str(tmp_path), "--dry-run", "--stage-dir", str(tmp_path / "s")]) == 0
    assert "note: no rope_i_vit_t16_pn_aps_c1_pe-core_text.safetensors" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(["README.md", "config.json", get_entry(NAME).weights.file])


def test_weights_of_another_model_are_refused(weights, tmp_path):
    other = get_entry("rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial")
    (tmp_path / other.weights.file).symlink_to(weights / get_entry(NAME).weights.file)
    with pytest.raises(PublishError, match=f"holds '{NAME}', not '{other.name}'"):
        checked_weights(other, tmp_path)


def test_staging_folder_must_be_empty(weights, tmp_path, capsys):
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "old.txt").write_text("x")
    assert main([NAME, "--repo-id", "a/b", "--weights-dir", str(weights), "--dry-run", "--stage-dir", str(tmp_path / "stage")]) == 1
    assert "is not empty" in capsys.readouterr().err


def test_dry_run_without_stage_dir_leaves_nothing_behind(weights, capsys):
    before = sorted(p.name for p in weights.iterdir())
    assert main([NAME, "--repo-id", "someone/pe-t16", "--weights-dir", str(weights), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "config.json" in out and "README.md" in out and "nothing uploaded" in out
    assert sorted(p.name for p in weights.iterdir()) == before


class FakeHub(BaseHTTPRequestHandler):
    """A local stand-in for the four Hub API routes a (non-Xet) ``upload_folder`` uses; it records each request."""

    requests: list[tuple[str, str, bytes]] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _reply(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(404, {"error": "not served here"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append((self.path, self.headers.get("Authorization", ""), body))
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/repos/create":
            req = json.loads(body)
            self._reply(200, {"url": f"{base}/{req['organization']}/{req['name']}"})
        elif self.path == "/api/validate-yaml":
            self._reply(200, {"errors": [], "warnings": []})
        elif self.path.endswith("/preupload/main"):
            files = json.loads(body)["files"]
            self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        elif self.path.endswith("/commit/main"):
            self._reply(200, {"commitUrl": f"{base}/someone/pe-t16/commit/{'c' * 40}", "commitOid": "c" * 40})
        else:
            self._reply(404, {"error": f"unexpected {self.path}"})


def test_publish_uploads_the_staged_folder_and_says_how_to_use_it(weights, tmp_path):
    FakeHub.requests.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = "hf_NotARealTokenButSecret123"
    try:
        r = run_cli([NAME, "--repo-id", "someone/pe-t16", "--weights-dir", str(weights), "--private"], tmp_path,
                    HF_TOKEN=token, HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_HUB_DISABLE_XET="1")
    finally:
        server.shutdown()
    assert r.returncode == 0, r.stderr
    calls = {path: (auth, body) for path, auth, body in FakeHub.requests}
    assert all(auth == f"Bearer {token}" for auth, _ in calls.values())
    assert json.loads(calls["/api/repos/create"][1]) == {"name": "pe-t16", "organization": "someone", "visibility": "private"}
    lines = [json.loads(line) for line in calls["/api/models/someone/pe-t16/commit/main"][1].splitlines()]
    uploaded = {v["value"]["path"]: base64.b64decode(v["value"]["content"]) for v in lines if v["key"] == "file"}
    entry = get_entry(NAME)
    assert sorted(uploaded) == sorted(["README.md", "config.json", entry.weights.file, text_weights_file(entry)])
    assert uploaded[text_weights_file(entry)] == (weights / text_weights_file(entry)).read_bytes()
    assert uploaded["README.md"].decode() == render_card(NAME)
    assert json.loads(uploaded["config.json"])["name"] == NAME
    sha = sha256(weights / entry.weights.file)
    assert hashlib.sha256(uploaded[entry.weights.file]).hexdigest() == sha
    assert token not in r.stdout + r.stderr
    assert f"published {NAME} to http://127.0.0.1:{server.server_address[1]}/someone/pe-t16\n" in r.stdout
    assert f"weights: {{file: {entry.weights.file}, sha256: {sha}, hub_repo: someone/pe-t16}}" in r.stdout
    left = sorted(p.name for p in weights.iterdir() if not p.name.endswith(".sha256.json"))  # (the converter's records)
    assert left == sorted([entry.weights.file, text_weights_file(entry)])  # staging gone
    # following the printed advice (hub_repo + sha256 in the registry), the loader takes the published file
    (tmp_path / "published").write_bytes(uploaded[entry.weights.file])
    add_file(tmp_path / "hub", "someone/pe-t16", entry.weights.file, tmp_path / "published")
    advised = dataclasses.replace(entry, weights=dataclasses.replace(entry.weights, sha256=sha, hub_repo="someone/pe-t16"))
    with use_cache(tmp_path / "hub", offline=True):
        net, info = load_entry(advised, inference=True, weights_dir=tmp_path / "empty")
    assert info.weights.is_relative_to(tmp_path / "hub") and info.weights.name == entry.weights.file
    with safe_open(weights / entry.weights.file, framework="pt") as f:
        torch.testing.assert_close(net.state_dict()["pos_embed"], f.get_tensor("pos_embed"), rtol=0, atol=0)
