"""load_pretrained_model: every resolution path through a real offline Hub cache, verification, metadata
checks, new_size and bfloat16; outputs checked against timm on the same weights."""

import dataclasses
import os

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from tests.oracle import timm_model, timm_outputs
from tests.weights_env import CORE, SPATIAL, add_meta_source, assert_memory_mapped, hub, write_meta_checkpoint  # noqa: F401 (fixture)
from zoo import weights
from zoo.weights import convert_checkpoint, file_sha256, meta_to_zoo
from zoo.testing.hub_cache import add_file
from zoo.inference import infer_image
from zoo.loader import load_entry
from zoo.paths import weights_dir

TOL = 1e-5


def converted(entry, tmp_path, folder, seed=0):
    """A zoo weights file of ``entry`` in ``folder``, converted from a synthetic Meta checkpoint."""
    src = tmp_path / f"src-{seed}.pt"
    vision = write_meta_checkpoint(entry, src, seed)
    return convert_checkpoint(entry, src, folder).path, vision


def assert_weights(net, entry, vision):
    expected = meta_to_zoo(vision, entry.config)
    state = net.state_dict()
    assert state.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(state[k], v), k


@pytest.mark.parametrize("entry", [CORE, SPATIAL], ids=["core", "spatial"])
def test_seed_snippet_matches_timm(entry, hub, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="zoo")
    """The README/seed-card call, with Meta's checkpoint only in the (offline) Hub cache."""
    vision = add_meta_source(hub, entry, tmp_path)
    image_path = tmp_path / "image.jpeg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(image_path)

    (net, model_info) = zoo.load_pretrained_model(entry.name, inference=True)
    size = zoo.get_size_from_signature(model_info.signature)
    transform = zoo.classification_transform(size, model_info.rgb_stats)
    (out, embedding) = infer_image(net, str(image_path), transform, return_embedding=True)
    image = Image.open(image_path)
    features = net.detection_features(transform(image).unsqueeze(0))

    W, G = entry.config.width, entry.config.grid
    assert size == entry.size and embedding.shape == (1, W) and isinstance(embedding, np.ndarray)
    assert np.array_equal(out, embedding)  # no head: the output is the embedding itself
    assert list(features) == ["neck"] and features["neck"].shape == (1, W, G, G)
    x = transform(image).unsqueeze(0)
    ref = timm_outputs(timm_model(entry, entry.config, vision, *size), x)
    assert ref["embedding"].abs().mean() > 0.1
    assert np.abs(embedding - ref["embedding"].numpy()).max() <= TOL
    neck_ref = ref["tokens"][:, entry.config.num_prefix_tokens:].transpose(1, 2).reshape(1, W, G, G)
    assert (features["neck"] - neck_ref).abs().max() <= TOL
    # bfloat16: a bfloat16 net whose embedding stays close to timm's float32 one
    net16, _ = zoo.load_pretrained_model(entry.name, inference=True, dtype=torch.bfloat16)
    assert {p.dtype for p in net16.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        emb16 = net16.embedding(x)
    assert emb16.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(emb16.float(), ref["embedding"]).item() > 0.999
    # converted once into the weights folder ($ZOO_HOME), with its sha256 recorded
    path = weights_dir() / entry.weights.file
    assert model_info.weights == path and weights.sidecar_path(path).is_file()
    assert "converting Meta's checkpoint" in caplog.text  # logged through the "zoo" logger
    assert capsys.readouterr().out == ""  # a library call prints nothing
    caplog.clear()
    stamp = os.stat(path)
    zoo.load_pretrained_model(entry.name)
    assert "converting" not in caplog.text
    assert (os.stat(path).st_ino, os.stat(path).st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)


def test_model_info_and_lean_load(hub, tmp_path):
    add_meta_source(hub, CORE, tmp_path)
    net, info = zoo.load_pretrained_model(CORE.name, inference=True)
    assert isinstance(info, zoo.ModelInfo)
    assert (info.name, info.family, info.class_to_idx) == (CORE.name, "core", {})
    assert (info.size, info.native_size, info.embedding_size, info.patch_size) == ((384, 384), (384, 384), 192, 16)
    assert info.signature == CORE.signature and info.rgb_stats == CORE.rgb_stats
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert not any(t.is_meta for t in [*net.parameters(), *net.buffers()])
    net, _ = zoo.load_pretrained_model(CORE.name)
    assert net.training and all(p.requires_grad for p in net.parameters())
    net(torch.randn(1, 3, 32, 32)).sum().backward()  # trainable: gradients flow into the loaded weights
    assert net.patch_embed.weight.grad is not None


@pytest.mark.parametrize("source", ["weights folder", "converted Hub repo"])
def test_weights_are_memory_mapped_not_copied(source, hub, tmp_path):
    """Right after loading, every parameter and buffer of the state dict lies in a mapping of the weights file."""
    entry = dataclasses.replace(CORE, weights=dataclasses.replace(CORE.weights, hub_repo="pe-zoo/t16-core"))
    path, _ = converted(entry, tmp_path, weights_dir() if source == "weights folder" else tmp_path / "build")
    if source == "converted Hub repo":
        add_file(hub, "pe-zoo/t16-core", entry.weights.file, path)
    for kwargs in ({}, {"inference": True, "new_size": 64}):
        net, info = load_entry(entry, **kwargs)
        assert (source == "converted Hub repo") == str(info.weights).startswith(str(hub))
        state = net.state_dict(keep_vars=True)
        assert dict(net.named_parameters()).keys() <= state.keys()
        assert_memory_mapped(state, info.weights)


def test_local_folder(hub, tmp_path):
    folder = tmp_path / "my-weights"
    path, vision = converted(CORE, tmp_path, folder)
    net, info = zoo.load_pretrained_model(CORE.name, weights_dir=folder)
    assert info.weights == path
    assert_weights(net, CORE, vision)


def test_converted_repo_in_hub_cache(hub, tmp_path):
    entry = dataclasses.replace(CORE, weights=dataclasses.replace(CORE.weights, hub_repo="pe-zoo/t16-core"))
    path, vision = converted(entry, tmp_path, tmp_path / "build")
    add_file(hub, "pe-zoo/t16-core", entry.weights.file, path)
    net, info = load_entry(entry)
    assert str(info.weights).startswith(str(hub)) and "models--pe-zoo--t16-core" in str(info.weights)
    assert not (weights_dir() / entry.weights.file).exists()  # nothing converted: the Hub file is used
    assert_weights(net, entry, vision)


def test_offline_nothing_cached(hub):
    with pytest.raises(weights.WeightsNotFoundError) as err:
        zoo.load_pretrained_model(CORE.name)
    msg = str(err.value)
    for part in (str(weights_dir() / CORE.weights.file), "facebook/PE-Core-T16-384", "PE-Core-T16-384.pt",
                 "python -m converters.pe_core --variant T16"):
        assert part in msg
    entry = dataclasses.replace(SPATIAL, weights=dataclasses.replace(SPATIAL.weights, hub_repo="pe-zoo/nowhere"))
    with pytest.raises(weights.WeightsNotFoundError, match="pe-zoo/nowhere.*converters.pe_spatial --variant T16"):
        load_entry(entry)


def test_registry_sha256(hub, tmp_path):
    path, vision = converted(CORE, tmp_path, weights_dir())
    actual = file_sha256(path)
    wrong = dataclasses.replace(CORE, weights=dataclasses.replace(CORE.weights, sha256="ab" * 32))
    with pytest.raises(weights.WeightsIntegrityError) as err:
        load_entry(wrong)
    assert actual in str(err.value) and "ab" * 32 in str(err.value)
    assert "python -m converters.pe_core --variant T16" in str(err.value)
    right = dataclasses.replace(CORE, weights=dataclasses.replace(CORE.weights, sha256=actual))
    assert_weights(load_entry(right)[0], right, vision)


def _alter_in_place(path):
    """Change bytes in the middle of the file, keeping its size and mtime."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        chunk = f.read(8)
        f.seek(st.st_size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns


def test_altered_in_place_is_never_loaded(hub, tmp_path):
    path, vision = converted(CORE, tmp_path, weights_dir())
    zoo.load_pretrained_model(CORE.name)  # first verification records the hash
    recorded = file_sha256(path)
    _alter_in_place(path)
    with pytest.raises(weights.WeightsIntegrityError) as err:
        zoo.load_pretrained_model(CORE.name)
    assert recorded in str(err.value) and file_sha256(path) in str(err.value)
    assert "converters.pe_core --variant T16 --force" in str(err.value)
    # with Meta's checkpoint in the Hub cache the file is rebuilt, with a visible warning
    vision = add_meta_source(hub, CORE, tmp_path, seed=0)
    with pytest.warns(UserWarning, match="Rebuilding it now"):
        net, _ = zoo.load_pretrained_model(CORE.name)
    assert_weights(net, CORE, vision)
    assert weights.verify(path, None, "rebuild") == file_sha256(path)  # the rebuilt file is recorded


def test_hash_only_when_file_changed(hub, tmp_path, monkeypatch):
    path, _ = converted(CORE, tmp_path, weights_dir())
    assert weights.sidecar_path(path).is_file()  # the converter recorded the hash of the file it wrote
    weights.sidecar_path(path).unlink()  # now as a file copied in from elsewhere
    calls = []
    monkeypatch.setattr(weights.integrity, "file_sha256", lambda p: calls.append(p) or file_sha256(p))
    zoo.load_pretrained_model(CORE.name)
    assert len(calls) == 1  # new to the zoo: hashed once and recorded
    zoo.load_pretrained_model(CORE.name)
    assert len(calls) == 1  # unchanged: the recorded hash is trusted
    os.utime(path)  # touched, same bytes: hashed again, accepted
    zoo.load_pretrained_model(CORE.name)
    assert len(calls) == 2


def test_metadata_must_name_the_checkpoint(hub, tmp_path):
    other = dataclasses.replace(CORE, name="rope_i_vit_s16_pn_aps_c1_pe-core")  # writes CORE's file name
    converted(other, tmp_path, weights_dir())
    with pytest.raises(weights.WeightsIntegrityError, match="names the checkpoint 'rope_i_vit_s16_pn_aps_c1_pe-core'"):
        zoo.load_pretrained_model(CORE.name)


def test_metadata_config_must_match(hub, tmp_path):
    cut = dataclasses.replace(CORE, config=dataclasses.replace(CORE.config, depth=2))
    converted(cut, tmp_path, weights_dir())
    with pytest.raises(weights.WeightsIntegrityError, match=r"config differs.*'depth': \(2, 12\)"):
        zoo.load_pretrained_model(CORE.name)


def test_only_safetensors_are_loaded(hub, tmp_path):
    path = weights_dir() / CORE.weights.file
    path.parent.mkdir(parents=True)
    write_meta_checkpoint(CORE, path)  # a pickle under the safetensors name
    with pytest.raises(weights.WeightsIntegrityError, match="not a readable safetensors file"):
        zoo.load_pretrained_model(CORE.name)


def test_new_size_matches_timm(hub, tmp_path):
    vision = add_meta_source(hub, SPATIAL, tmp_path)
    net, info = zoo.load_pretrained_model(SPATIAL.name, inference=True, new_size=(320, 448))
    assert zoo.get_size_from_signature(info.signature) == (320, 448) == info.size
    assert info.signature["inputs"][0]["data_shape"] == [0, 3, 320, 448]
    assert info.native_size == (512, 512) and SPATIAL.signature["inputs"][0]["data_shape"] == [0, 3, 512, 512]
    x = torch.randn(1, 3, 320, 448)
    ref = timm_outputs(timm_model(SPATIAL, SPATIAL.config, vision, 320, 448), x)
    with torch.no_grad():
        assert (net.embedding(x) - ref["embedding"]).abs().max() <= TOL
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        zoo.load_pretrained_model(SPATIAL.name, new_size=(100, 100))


def test_reconverting_with_the_cli_keeps_loading(hub, tmp_path):
    """The converter CLI records what it writes: a --force rebuild from another source loads, the old record does not block it."""
    from converters.pe_core import main as convert_main

    folder = tmp_path / "w"
    src0, src1 = tmp_path / "a.pt", tmp_path / "b.pt"
    write_meta_checkpoint(CORE, src0, seed=0)
    vision1 = write_meta_checkpoint(CORE, src1, seed=1)
    # --vision-only: these CLIP files carry a cut-down text tower (the text file: tests/test_clip_load.py)
    assert convert_main(["--variant", "T16", "--checkpoint", str(src0), "--out", str(folder), "--vision-only"]) == 0
    zoo.load_pretrained_model(CORE.name, weights_dir=folder)  # verified and recorded
    assert convert_main(["--variant", "T16", "--checkpoint", str(src1), "--out", str(folder), "--force", "--vision-only"]) == 0
    net, _ = zoo.load_pretrained_model(CORE.name, weights_dir=folder)
    assert_weights(net, CORE, vision1)


# ------------------------------------------------------------------------------ one pipeline, hostile records
from zoo.cli import USER_ERRORS  # noqa: E402
from zoo.weights.finetuned import FORMAT  # noqa: E402
from zoo.weights.writer import TensorSpec, write_safetensors  # noqa: E402


def _finetuned_file(path, record, tensors):
    """A fine-tuned file as ``zoo.finetune`` writes it, with any record (even a tampered one)."""
    specs = [TensorSpec(k, tuple(v.shape), v.dtype, lambda v=v: v.contiguous()) for k, v in tensors.items()]
    _, sha = write_safetensors(path, specs, {"format": FORMAT, "finetune": __import__("json").dumps(record)})
    weights.record(path, sha)
    return path


@pytest.fixture(scope="module")
def full_state():
    """Every tensor of a 2-class T16 net (cheap constant values, a random head)."""
    shapes = zoo.create_model(CORE.name, num_classes=2, device="meta").state_dict()
    state = {k: torch.full(v.shape, 0.01) for k, v in shapes.items()}
    state["head.weight"] = torch.randn(2, 192, generator=torch.Generator().manual_seed(0))
    return state


def test_a_registry_name_never_means_a_stray_file(full_state, hub, tmp_path, monkeypatch):
    """issue 21: a file named like a registry model in the current folder does not replace the model."""
    monkeypatch.chdir(tmp_path)
    _finetuned_file(tmp_path / CORE.name, {"base": CORE.name, "class_to_idx": {"a": 0, "b": 1}, "size": [64, 64],
                                           "tensors": "full"}, full_state)
    with pytest.raises(weights.WeightsNotFoundError, match=f"no weights for {CORE.name}"):
        zoo.load_pretrained_model(CORE.name)  # the registry (nothing in this empty cache), not the file
    net, info = zoo.load_pretrained_model(f"./{CORE.name}", inference=True)  # the path form loads the file
    assert info.class_to_idx == {"a": 0, "b": 1} and net.num_classes == 2 and info.size == (64, 64)
    assert info.signature == {"inputs": [{"data_shape": [0, 3, 64, 64]}], "outputs": [{"data_shape": [0, 2]}]}
    assert net.pretrained_cfg["input_size"] == (3, 64, 64) and net.pretrained_cfg["num_classes"] == 2
    assert torch.equal(net.head.weight, full_state["head.weight"])


@pytest.mark.parametrize("record, problem", [
    ({"class_to_idx": {"a": 0}, "size": [64, 64], "tensors": "full"}, "base registry model"),
    ({"base": CORE.name, "class_to_idx": 3, "size": [64, 64], "tensors": "full"}, "class_to_idx must map"),
    ({"base": CORE.name, "class_to_idx": {"a": 0}, "size": 64, "tensors": "full"}, r"\[height, width\]"),
    (["base", CORE.name], "must be a JSON object"),
    ({"base": CORE.name, "class_to_idx": {"a": 0, "b": 0}, "size": [64, 64], "tensors": "full"}, "duplicate or out-of-range"),
    ({"base": CORE.name, "class_to_idx": {"a": 0, "b": 5}, "size": [64, 64], "tensors": "full"}, "duplicate or out-of-range"),
    ({"base": 7, "class_to_idx": {"a": 0}, "size": [64, 64], "tensors": "full"}, "base registry model"),
], ids=["no-base", "int-classes", "int-size", "list", "duplicate-index", "out-of-range-index", "int-base"])
def test_tampered_finetuned_records_are_one_line_errors(record, problem, full_state, tmp_path):
    """issue 21: a tampered fine-tune record, or class indices that are not 0..n-1 once each, is refused in one line."""
    path = _finetuned_file(tmp_path / "model.safetensors", record, full_state)
    with pytest.raises(USER_ERRORS, match=problem) as e:
        zoo.load_pretrained_model(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_model_info_transform_and_signature_follow_the_info(full_state, hub, tmp_path):
    """ModelInfo.transform() is the net's preprocessing at the size in use; the signature follows the info."""
    net, info = zoo.load_pretrained_model(_finetuned_file(tmp_path / "m.safetensors", {
        "base": CORE.name, "class_to_idx": {"a": 1, "b": 0}, "size": [48, 32], "tensors": "full"}, full_state), new_size=(32, 64))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    x = info.transform()(image)
    # the formula written here: squash-resize to (32, 64) bilinear, scale to [0, 1], (x - mean) / std
    from torchvision.transforms import functional as TF
    ref = (TF.to_tensor(TF.resize(image, [32, 64], interpolation=TF.InterpolationMode.BILINEAR)) - 0.5) / 0.5
    assert x.shape == (3, 32, 64) and torch.allclose(x, ref, atol=1e-6)
    assert info.signature["inputs"][0]["data_shape"] == [0, 3, 32, 64] and zoo.get_size_from_signature(info.signature) == (32, 64)
    headless = dataclasses.replace(info, class_to_idx={}, num_classes=0)
    assert headless.signature["outputs"] == [{"data_shape": [0, 192]}]
    assert info.with_classes({"x": 0, "y": 1, "z": 2}, tmp_path).signature["outputs"] == [{"data_shape": [0, 3]}]


def test_install_random_weights_puts_meta_files_where_the_loader_looks(tmp_path):
    """The documented way to try everything offline: random Meta-layout weights in the Hub cache, found offline."""
    from zoo.testing import install_random_weights
    from zoo.testing.hub_cache import use_cache
    from zoo.testing.synthetic import meta_vision_state_dict

    with use_cache(tmp_path / "default-cache", offline=True):
        with pytest.raises(zoo.registry.UnknownModelError):
            install_random_weights([SPATIAL.name, "no-such-model"])
        assert not (tmp_path / "default-cache").exists()  # names checked before anything is written
        cache = install_random_weights(SPATIAL.name)  # the default: huggingface_hub's cache (HF_HUB_CACHE here)
        places = weights.locate(SPATIAL, tmp_path / "empty-weights")
    assert cache == tmp_path / "default-cache"
    meta = next(p for p in places if p.what == "Meta checkpoint")
    assert meta.path is not None and meta.path.is_relative_to(cache)
    saved = torch.load(meta.path, map_location="cpu", weights_only=True, mmap=True)
    expected = meta_vision_state_dict(SPATIAL.config, seed=0)
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], v) for k, v in expected.items())


@pytest.mark.slow
def test_install_random_weights_then_load_offline(tmp_path, monkeypatch):
    """The whole offline path: installed random weights, converted and loaded by name, as Meta's file would be."""
    from zoo.testing import install_random_weights
    from zoo.testing.hub_cache import use_cache
    from zoo.testing.synthetic import meta_vision_state_dict

    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo-home"))
    with use_cache(tmp_path / "cache", offline=True):
        install_random_weights([SPATIAL.name])
        net, info = zoo.load_pretrained_model(SPATIAL.name, inference=True, progress_bar=False)
    expected = meta_to_zoo(meta_vision_state_dict(SPATIAL.config, seed=0), SPATIAL.config)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())
    assert info.weights.parent == tmp_path / "zoo-home" / "weights"


def test_a_file_written_as_a_bare_name_gets_the_path_form_in_the_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").write_bytes(b"x")
    with pytest.raises(zoo.registry.UnknownModelError, match=r"write it as a path: './my-model'"):
        zoo.load_pretrained_model("my-model")


def test_a_cached_meta_checkpoint_is_used_without_asking_the_network(tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE and no network: a source already in the Hub cache never waits on a request (it waited
    50 s on a machine without network)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from huggingface_hub import constants
    from zoo.testing.hub_cache import use_cache

    asked = []

    class Refuse(BaseHTTPRequestHandler):
        def do_HEAD(self):
            asked.append(self.path)
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "src.pt").write_bytes(b"meta checkpoint")
    add_file(tmp_path / "cache", SPATIAL.source.repo, SPATIAL.source.file, tmp_path / "src.pt")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", constants.ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}")
    try:
        with use_cache(tmp_path / "cache", offline=False):
            path = weights.download_source(SPATIAL, progress=False)
            with pytest.raises(weights.ConversionError):  # the stand-in Hub is asked for what is not cached
                weights.download_source(CORE, progress=False)
    finally:
        server.shutdown()
    assert path.read_bytes() == b"meta checkpoint"
    files = [p for p in asked if "/resolve/" in p]
    assert files and all(p.endswith("/" + CORE.source.file) for p in files)  # never for the cached file
