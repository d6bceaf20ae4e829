"""zoo.finetune and ``python -m zoo finetune`` end to end on a generated three-class ImageFolder: the linear probe and
a short full fine-tune of PE-Core T16 (synthetic Meta weights in an offline Hub cache) reach high validation accuracy,
the written file loads back through ``zoo.load_pretrained_model(path)`` and predicts exactly as the trained net."""

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from tests.weights_env import CORE, add_meta_source, hub  # noqa: F401 (fixture)
from zoo.cli import main
from zoo.finetune import FinetuneArgs, find_images, finetune
from zoo.inference import infer_batch
from zoo.weights import WeightsIntegrityError, read_metadata

T16 = CORE.name
CLASSES = ("blue", "green", "red")


def write_folder(root, per_class: int = 16, seed: int = 0):
    """Three clearly different classes: noisy red, green and blue images of random sizes, with a grey blob."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(40, 90, 2)
            img = rng.integers(0, 90, (h, w, 3))
            img[..., 2 - c] += 150  # blue -> channel 2, green -> 1, red -> 0
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            img[y:y + h // 3, x:x + w // 3] = 128
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def data(tmp_path):
    return write_folder(tmp_path / "data")


def val_images(args):
    _, val, classes = find_images(args.data, args.val_fraction, args.seed)
    return [p for p, _ in val], np.array([i for _, i in val]), classes


def check_round_trip(result, args):
    """The written file loads back with its classes and predicts exactly as the trained net."""
    net, info = zoo.load_pretrained_model(str(result.path), inference=True)
    assert info.class_to_idx == {c: i for i, c in enumerate(CLASSES)} == result.class_to_idx
    assert info.size == (64, 64) and info.signature["outputs"][0]["data_shape"] == [0, 3]
    assert info.weights == result.path
    transform = zoo.classification_transform(zoo.get_size_from_signature(info.signature), info.rgb_stats)
    paths, labels, _ = val_images(args)
    probs = infer_batch(net, paths, transform)
    assert probs.shape == (len(paths), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == labels).mean() >= 0.9
    np.testing.assert_allclose(probs, infer_batch(result.net, paths, transform), atol=1e-6)
    meta = json.loads(read_metadata(result.path)["finetune"])
    assert meta["base"] == T16 and meta["class_to_idx"] == info.class_to_idx
    assert meta["args"]["epochs"] == args.epochs and meta["args"]["linear_probe"] == args.linear_probe
    metrics = json.loads(result.metrics_path.read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, args.epochs + 1))
    assert all({"train_loss", "val_top1"} <= set(e) for e in metrics["epochs"])
    best = max(metrics["epochs"], key=lambda e: e["val_top1"])
    assert metrics["best_epoch"] == best["epoch"] and metrics["best_val_top1"] == best["val_top1"] == meta["val_top1"]
    return metrics


def test_linear_probe_and_finetune_end_to_end(hub, tmp_path, data):
    add_meta_source(hub, CORE, tmp_path)
    zoo.load_pretrained_model(T16)  # convert the base weights once, outside the timings
    common = dict(name=T16, data=data, epochs=4, batch_size=16, size=64, val_fraction=0.25)

    probe_args = FinetuneArgs(out=tmp_path / "probe", linear_probe=True, lr=1e-2, **common)
    started = time.perf_counter()
    probe = finetune(probe_args, progress=False)
    probe_s = time.perf_counter() - started
    metrics = check_round_trip(probe, probe_args)
    assert metrics["best_val_top1"] >= 0.9
    assert json.loads(read_metadata(probe.path)["finetune"])["tensors"] == "head"  # the backbone stays the base file's

    ft_args = FinetuneArgs(out=tmp_path / "ft", lr=1e-3, warmup_epochs=0.5, drop_path=0.05, **common)
    started = time.perf_counter()
    ft = finetune(ft_args, progress=False)
    ft_s = time.perf_counter() - started
    metrics = check_round_trip(ft, ft_args)
    assert metrics["best_val_top1"] >= 0.9
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    assert probe_s < ft_s / 3, (probe_s, ft_s)  # embeddings computed once vs forward + backward every epoch


def test_cli_refuses_existing_out_and_overwrites_with_force(hub, tmp_path, data, capsys):
    add_meta_source(hub, CORE, tmp_path)
    out = tmp_path / "out"
    argv = ["-q", "finetune", T16, "--data", str(data), "--out", str(out), "--linear-probe", "--epochs", "2", "--size", "64"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best epoch" in printed and str(out / "model.safetensors") in printed
    first = (out / "model.safetensors").read_bytes()
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err and (out / "model.safetensors").read_bytes() == first
    assert main([*argv, "--force", "--seed", "1"]) == 0
    assert (out / "model.safetensors").read_bytes() != first


def test_find_images_train_val_layout_and_errors(tmp_path):
    write_folder(tmp_path / "split" / "train", per_class=3)
    write_folder(tmp_path / "split" / "val", per_class=2, seed=1)
    train, val, classes = find_images(tmp_path / "split", 0.5)
    assert classes == {"blue": 0, "green": 1, "red": 2} and len(train) == 9 and len(val) == 6
    assert all(f"/train/{CLASSES[i]}/" in p for p, i in train) and all(f"/val/{CLASSES[i]}/" in p for p, i in val)
    tree = write_folder(tmp_path / "tree", per_class=10)
    train, val, _ = find_images(tree, 0.2)
    assert len(val) == 6 and len(train) == 24 and not {p for p, _ in train} & {p for p, _ in val}
    (tmp_path / "split" / "val" / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "split" / "val" / "cat" / "0.png")
    with pytest.raises(ValueError, match=r"classes that .* lacks: \['cat'\]"):
        find_images(tmp_path / "split", 0.5)
    with pytest.raises(ValueError, match="not an image folder tree"):
        find_images(tmp_path / "nothing", 0.5)


def test_loading_a_changed_or_foreign_file_is_refused(hub, tmp_path, data):
    add_meta_source(hub, CORE, tmp_path)
    result = finetune(FinetuneArgs(name=T16, data=data, out=tmp_path / "p", linear_probe=True, epochs=1, size=64), progress=False)
    with pytest.raises(ValueError, match="its own head"):
        zoo.load_pretrained_model(str(result.path), num_classes=5)
    raw = bytearray(result.path.read_bytes())
    raw[-1] ^= 0xFF  # one byte of the head changed
    result.path.write_bytes(bytes(raw))
    with pytest.raises(WeightsIntegrityError, match="was changed"):
        zoo.load_pretrained_model(str(result.path))
    with pytest.raises(WeightsIntegrityError, match="not a pe-zoo fine-tuned model"):
        zoo.load_pretrained_model(str(zoo.weights.resolve(CORE)))
    with pytest.raises(FileNotFoundError, match="no fine-tuned model file"):
        zoo.load_pretrained_model(str(tmp_path / "missing.safetensors"))


def test_finetune_with_checkpointing_and_bfloat16(hub, tmp_path, data):
    """The memory and speed options run the same loop: autocast bfloat16 with float32 weights, blocks recomputed."""
    add_meta_source(hub, CORE, tmp_path)
    args = FinetuneArgs(name=T16, data=data, out=tmp_path / "o", epochs=1, batch_size=16, size=32, lr=1e-3,
                        grad_checkpointing=True, dtype="bfloat16")
    result = finetune(args, progress=False)
    assert result.net.grad_checkpointing and {p.dtype for p in result.net.parameters()} == {torch.float32}
    assert all(p.grad is None for p in result.net.parameters())  # freed after each step, not held through the next forward
    loss = result.metrics["epochs"][0]["train_loss"]
    assert 0 < loss < 10
    meta = json.loads(read_metadata(result.path)["finetune"])
    assert meta["args"]["grad_checkpointing"] and meta["args"]["dtype"] == "bfloat16" and meta["size"] == [32, 32]
