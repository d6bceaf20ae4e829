"""zoo.finetune and ``python -m zoo finetune`` on PE-Core T16 (synthetic Meta weights in an offline Hub cache).

The default tests watch what a short run does rather than how well it ends: the learning rate at every
optimizer step against the warmup + cosine formula, which rows the probe's head trains on, how often each
block runs (gradient checkpointing), and which epoch's weights the written file holds. The validation images
are one identical grey picture per class, so every epoch ties at 1/3 top-1 and the best epoch is the first
(the earliest of equals), never the last. The ``-m slow`` test trains to high accuracy on coloured images.
"""

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import zoo
from tests.weights_env import CORE, add_meta_source
from zoo.cli import main
from zoo.finetune import FinetuneArgs, find_images, finetune
from zoo.inference import infer_batch
from zoo.nets.pe_vit import Block
from zoo.testing.hub_cache import use_cache
from zoo.weights import WeightsIntegrityError, read_metadata
from zoo.weights.integrity import sidecar_path

T16 = CORE.name
CLASSES = ("blue", "green", "red")
IDX = {c: i for i, c in enumerate(CLASSES)}
SIZE = 32


def write_folder(root, per_class: int = 16, seed: int = 0, classes=CLASSES):
    """Clearly different classes: noisy red, green and blue images of random sizes, with a grey blob."""
    rng = np.random.default_rng(seed)
    for name in classes:
        c = CLASSES.index(name)
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(40, 90, 2)
            img = rng.integers(0, 90, (h, w, 3))
            img[..., 2 - c] += 150  # blue -> channel 2, green -> 1, red -> 0
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            img[y:y + h // 3, x:x + w // 3] = 128
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def grey(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 40), (120, 120, 120)).save(path)


@pytest.fixture(scope="module")
def t16(module_tmp):
    """An offline Hub cache holding a synthetic PE-Core T16 checkpoint, converted once for the module."""
    with pytest.MonkeyPatch.context() as mp, use_cache(module_tmp / "hub-cache", offline=True) as cache:
        mp.setenv("ZOO_HOME", str(module_tmp / "zoo-home"))
        cache.mkdir(exist_ok=True)
        add_meta_source(cache, CORE, module_tmp)
        zoo.load_pretrained_model(T16)
        yield


@pytest.fixture(scope="module")
def layout(module_tmp):
    """DIR/train (coloured, 2 per class, plus things to ignore or skip) and DIR/test (one identical grey image per class)."""
    root = module_tmp / "layout"
    write_folder(root / "train", per_class=2)
    (root / "train" / "red" / "broken.png").write_bytes(b"not a png at all")  # skipped and listed
    grey(root / "train" / ".ipynb_checkpoints" / "x.png")  # hidden: not a class
    grey(root / "train" / "blue" / ".x.png")  # hidden: not an image
    for c in CLASSES:
        grey(root / "test" / c / "0.png")
    return root


class Spy:
    """Records, for one run: the lr of every group at every optimizer step, the trainable tensors after each
    step, the inputs of the head while it trains, the images the patch embedding saw, and the runs of each block
    while gradients are on."""

    def __init__(self):
        self.lrs, self.after, self.head_inputs, self.images, self.block_runs = [], [], [], 0, {}
        self.handles = []

    def __enter__(self):
        def pre_step(opt, *_):
            self.lrs.append([(g["lr"], g.get("lr_scale", 1.0)) for g in opt.param_groups])

        def post_step(opt, *_):
            self.after.append([p.detach().clone() for g in opt.param_groups for p in g["params"]])

        def forward(module, args):
            if isinstance(module, nn.Conv2d):
                self.images += args[0].shape[0]
            elif isinstance(module, Block) and torch.is_grad_enabled():
                self.block_runs[id(module)] = self.block_runs.get(id(module), 0) + 1
            elif type(module) is nn.Linear and module.out_features == len(CLASSES) and torch.is_grad_enabled():
                self.head_inputs.append(args[0].detach().clone())

        self.handles = [register_optimizer_step_pre_hook(pre_step),
                        register_optimizer_step_post_hook(post_step),
                        nn.modules.module.register_module_forward_pre_hook(forward)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def lr_formula(step: int, steps_per_epoch: int, epochs: int, warmup_epochs: float) -> float:
    """Linear warmup to 1 over the first steps ((s + 1) / warmup), then half a cosine down to 0 at the end."""
    warmup, total = round(warmup_epochs * steps_per_epoch), epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


COMMON = dict(name=T16, epochs=2, batch_size=3, size=SIZE, warmup_epochs=1.0, workers=0)
STEPS = 2  # per epoch: 6 readable training images (7 with the broken one, last batch dropped) in batches of 3


def run(t16, layout, tmp, **kw):
    args = FinetuneArgs(data=layout, out=tmp / "out", **{**COMMON, **kw})
    with Spy() as spy:
        result = finetune(args, progress=False)
    return args, result, spy


@pytest.fixture(scope="module")
def probe(t16, layout, module_tmp):
    return run(t16, layout, module_tmp / "probe", linear_probe=True, lr=0.5, workers=2)  # images decoded in 2 processes


@pytest.fixture(scope="module")
def full(t16, layout, module_tmp):
    return run(t16, layout, module_tmp / "full", lr=1e-3, drop_path=0.0, grad_checkpointing=True, dtype="bfloat16")


def check_round_trip(result, args, val_paths, val_labels, accuracy=None):
    """The written file loads back with its classes and predicts exactly as the trained net."""
    net, info = zoo.load_pretrained_model(str(result.path), inference=True)
    assert info.class_to_idx == IDX == result.class_to_idx
    assert info.size == (args.size, args.size) and info.signature["outputs"][0]["data_shape"] == [0, 3]
    assert info.weights == result.path
    transform = zoo.classification_transform(zoo.get_size_from_signature(info.signature), info.rgb_stats)
    probs = infer_batch(net, val_paths, transform)
    assert probs.shape == (len(val_paths), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(probs, infer_batch(result.net, val_paths, transform), atol=1e-6)
    if accuracy is not None:
        assert (probs.argmax(1) == val_labels).mean() >= accuracy
    meta = json.loads(read_metadata(result.path)["finetune"])
    assert meta["base"] == T16 and meta["class_to_idx"] == info.class_to_idx
    assert meta["args"]["epochs"] == args.epochs and meta["args"]["linear_probe"] == args.linear_probe
    metrics = json.loads(result.metrics_path.read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, args.epochs + 1))
    assert all({"train_loss", "val_top1"} <= set(e) for e in metrics["epochs"])
    best = max(metrics["epochs"], key=lambda e: e["val_top1"])
    assert metrics["best_epoch"] == best["epoch"] and metrics["best_val_top1"] == best["val_top1"] == meta["val_top1"]
    return metrics


def val_of(layout):
    return [str(layout / "test" / c / "0.png") for c in CLASSES], np.arange(3)


# ------------------------------------------------------------------------------------------ linear probe
def test_probe_round_trip_and_skips(probe, layout):
    args, result, _ = probe
    metrics = check_round_trip(result, args, *val_of(layout))
    assert json.loads(read_metadata(result.path)["finetune"])["tensors"] == "head"  # the backbone stays the base file's
    assert metrics["train_images"] == 7 and metrics["val_images"] == 3  # hidden entries ignored, the broken file counted
    assert len(metrics["unreadable"]) == 1 and "broken.png" in metrics["unreadable"][0]


def test_probe_trains_on_training_embeddings_only_after_one_backbone_pass(probe, layout):
    args, result, spy = probe
    assert spy.images == 6 + 3  # the backbone saw every readable image once, in no epoch again
    net, info = zoo.load_pretrained_model(T16, inference=True, new_size=SIZE)
    transform = zoo.classification_transform(info.size, info.rgb_stats)
    train, val, _ = find_images(layout, 0.2)
    readable = [p for p, _ in train if "broken" not in p]

    def embed(paths):
        return net.embedding(torch.stack([transform(Image.open(p)) for p in paths]))

    want, other = embed(readable), embed([p for p, _ in val])
    rows = torch.cat(spy.head_inputs)
    assert len(rows) == args.epochs * len(readable)
    matches = (torch.cdist(rows, want) < 1e-4).sum(0)
    assert matches.tolist() == [args.epochs] * len(readable)  # each training image once per epoch
    assert (torch.cdist(rows, other) > 1e-2).all()  # never a validation embedding


def test_probe_lr_follows_warmup_then_cosine(probe):
    args, _, spy = probe
    assert len(spy.lrs) == args.epochs * STEPS
    for step, groups in enumerate(spy.lrs):
        assert groups == [(pytest.approx(args.lr * lr_formula(step, STEPS, args.epochs, args.warmup_epochs)), 1.0)], step


def test_probe_file_holds_the_best_epochs_head(probe):
    args, result, spy = probe
    assert [e["val_top1"] for e in result.metrics["epochs"]] == [pytest.approx(1 / 3)] * 2 and result.metrics["best_epoch"] == 1
    tensors = load_file(result.path)
    epoch1, epoch2 = spy.after[STEPS - 1], spy.after[-1]  # head.weight, head.bias after each epoch's last step
    assert torch.equal(tensors["head.weight"], epoch1[0]) and torch.equal(tensors["head.bias"], epoch1[1])
    assert not torch.equal(tensors["head.weight"], epoch2[0])


# ------------------------------------------------------------------------------------- full fine-tuning
def test_finetune_round_trip_bfloat16(full, layout):
    args, result, _ = full
    check_round_trip(result, args, *val_of(layout))
    assert result.net.grad_checkpointing and {p.dtype for p in result.net.parameters()} == {torch.float32}
    assert all(p.grad is None for p in result.net.parameters())  # freed after each step, not held through the next forward
    meta = json.loads(read_metadata(result.path)["finetune"])
    assert meta["args"]["grad_checkpointing"] and meta["args"]["dtype"] == "bfloat16" and meta["size"] == [SIZE, SIZE]
    assert len(result.metrics["unreadable"]) == 1


def test_finetune_recomputes_every_block_with_checkpointing(full):
    args, result, spy = full
    steps = args.epochs * STEPS
    assert len(spy.block_runs) == len(result.net.blocks)
    assert list(spy.block_runs.values()) == [2 * steps] * len(result.net.blocks)  # forward, then again in backward


def test_finetune_lr_follows_warmup_then_cosine_per_layer(full):
    args, _, spy = full
    assert len(spy.lrs) == args.epochs * STEPS
    scales = {s for _, s in spy.lrs[0]}
    assert len(scales) > 5 and max(scales) == 1.0  # layer-wise decay
    for step, groups in enumerate(spy.lrs):
        factor = lr_formula(step, STEPS, args.epochs, args.warmup_epochs)
        for lr, scale in groups:
            assert lr == pytest.approx(args.lr * scale * factor), step


def test_finetune_file_holds_the_best_epochs_weights(full):
    args, result, spy = full
    assert [e["val_top1"] for e in result.metrics["epochs"]] == [pytest.approx(1 / 3)] * 2 and result.metrics["best_epoch"] == 1
    tensors = load_file(result.path)
    names = [n for n, p in result.net.named_parameters()]
    trainable = zoo.create_model(T16, num_classes=3)  # the optimizer's order: param_groups', every parameter named
    order = [n for g in zoo.param_groups(trainable, 1.0, 0.0, args.layer_decay) for n in g["names"]]
    assert sorted(order) == sorted(names)
    epoch1, epoch2 = dict(zip(order, spy.after[STEPS - 1])), dict(zip(order, spy.after[-1]))
    for n in names:
        assert torch.equal(tensors[n], epoch1[n]), n
    assert not torch.equal(tensors["head.weight"], epoch2["head.weight"])
    assert not torch.equal(tensors["blocks.0.attn.qkv.weight"], epoch2["blocks.0.attn.qkv.weight"])


# ------------------------------------------------------------------------------------------------ inputs
def test_find_images_train_val_layout_and_errors(tmp_path):
    write_folder(tmp_path / "split" / "train", per_class=3)
    write_folder(tmp_path / "split" / "val", per_class=2, seed=1, classes=("green", "red"))
    train, val, classes = find_images(tmp_path / "split", 0.5)
    assert classes == IDX and len(train) == 9 and len(val) == 4
    assert all(f"/train/{CLASSES[i]}/" in p for p, i in train)
    assert all(f"/val/{CLASSES[i]}/" in p for p, i in val)  # val's own indices would be green 0, red 1
    tree = write_folder(tmp_path / "tree", per_class=10)
    train, val, _ = find_images(tree, 0.2)
    assert len(val) == 6 and len(train) == 24 and not {p for p, _ in train} & {p for p, _ in val}
    (tmp_path / "split" / "val" / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "split" / "val" / "cat" / "0.png")
    with pytest.raises(ValueError, match=r"classes that .* lacks: \['cat'\]"):
        find_images(tmp_path / "split", 0.5)
    with pytest.raises(ValueError, match="cannot be read as a folder"):
        find_images(tmp_path / "nothing", 0.5)


def test_find_images_near_miss_layouts(tmp_path):
    for name in ("test", "validation", "Valid"):  # train + another name for the validation split
        write_folder(tmp_path / name / "train", per_class=2, classes=("blue", "red"))
        write_folder(tmp_path / name / name, per_class=1, classes=("blue", "red"))
        train, val, classes = find_images(tmp_path / name, 0.5)
        assert classes == {"blue": 0, "red": 1} and len(train) == 4, name
        assert all(f"/{name}/{c}/" in p for p, i in val for c in [("blue", "red")[i]]), name
    both = tmp_path / "both"
    write_folder(both / "train", per_class=2, classes=("blue", "red"))
    write_folder(both / "val", per_class=1, classes=("blue", "red"))
    write_folder(both / "test", per_class=3, classes=("blue", "red"))
    assert all("/val/" in p for p, _ in find_images(both, 0.5)[1])  # val first; test is left for testing
    alone = tmp_path / "alone"
    write_folder(alone / "train", per_class=4, classes=("blue", "red"))
    train, val, classes = find_images(alone, 0.5)  # train/ alone is split
    assert classes == {"blue": 0, "red": 1} and len(train) == len(val) == 4
    odd = tmp_path / "odd"
    write_folder(odd / "train", per_class=2)
    write_folder(odd / "extra", per_class=2)
    with pytest.raises(ValueError, match=r"holds extra, train: give train/ with val/"):
        find_images(odd, 0.5)
    only_val = tmp_path / "only_val"
    write_folder(only_val / "test", per_class=2)
    with pytest.raises(ValueError, match="give train/ with val/"):
        find_images(only_val, 0.5)
    nested = tmp_path / "nested"
    write_folder(nested / "images", per_class=2)
    with pytest.raises(ValueError, match=r"one class \('images'\).*pass --data .*nested/images"):
        find_images(nested, 0.5)
    one = tmp_path / "one"
    write_folder(one / "train", per_class=2, classes=("red",))
    write_folder(one / "val", per_class=2, classes=("red",))
    with pytest.raises(ValueError, match="has one class"):
        find_images(one, 0.5)
    hidden = tmp_path / "hidden"
    write_folder(hidden, per_class=2, classes=("blue", "red"))
    write_folder(hidden / ".ipynb_checkpoints", per_class=2, classes=("green",))
    grey(hidden / ".cache" / "x.png")
    grey(hidden / "red" / ".x.png")
    grey(hidden / "red" / ".thumbs" / "x.png")
    train, val, classes = find_images(hidden, 0.5)
    assert classes == {"blue": 0, "red": 1} and len(train) + len(val) == 4
    (hidden / "empty").mkdir()
    with pytest.raises(ValueError, match=r"\['empty'\] in .* hold no images"):
        find_images(hidden, 0.5)
    (hidden / "empty").rmdir()
    (hidden / "out").mkdir()
    grey(hidden / "out" / "x.png")
    assert find_images(hidden, 0.5, exclude=hidden / "out")[2] == {"blue": 0, "red": 1}


def test_refused_runs_create_nothing(t16, tmp_path, capsys):
    one = write_folder(tmp_path / "one", per_class=2, classes=("red",))
    for argv, message in [
        (["--data", str(one)], "has one class"),
        (["--data", str(tmp_path / "missing")], "cannot be read as a folder"),
    ]:
        assert main(["-q", "finetune", T16, "--out", str(tmp_path / "out"), *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists()
    assert main(["-q", "finetune", "no-such-model", "--data", str(one), "--out", str(tmp_path / "out")]) == 1
    assert "unknown model" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_cli_help_has_examples_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    assert text.count("python -m zoo finetune") >= 3 and "--seed SEED" in text and "seeds the validation split" in text
    from zoo.cli import build_parser

    args = build_parser().parse_args(["finetune", T16, "--data", "d", "--out", "o"])
    assert args.workers is None
    assert FinetuneArgs(name=T16, data="d", out="o").workers == min(8, os.cpu_count() or 1)  # as embed


def test_cli_out_existing_stale_partial_and_force(t16, layout, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".model.safetensors.4194305.1a2b3c4d.partial"  # left by a writer killed with -9 (no such pid)
    stale.write_bytes(b"half a file")
    argv = ["-q", "finetune", T16, "--data", str(layout), "--out", str(out), "--linear-probe", "--epochs", "1",
            "--size", str(SIZE), "--workers", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best epoch" in printed and str(out / "model.safetensors") in printed and "skipped 1 unreadable" in printed
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.safetensors", "model.safetensors.sha256.json"]
    first = (out / "model.safetensors").read_bytes()
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err and (out / "model.safetensors").read_bytes() == first
    assert main([*argv, "--force", "--seed", "1"]) == 0
    assert (out / "model.safetensors").read_bytes() != first


def test_loading_a_changed_or_foreign_file_is_refused(probe, tmp_path):
    _, result, _ = probe
    path = tmp_path / "model.safetensors"  # a copy of the file and its recorded sha256
    path.write_bytes(result.path.read_bytes())
    sidecar_path(path).write_bytes(sidecar_path(result.path).read_bytes())
    assert zoo.load_pretrained_model(str(path))[1].class_to_idx == IDX
    with pytest.raises(ValueError, match="its own head"):
        zoo.load_pretrained_model(str(result.path), num_classes=5)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one byte of the head changed
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsIntegrityError, match="was changed"):
        zoo.load_pretrained_model(str(path))
    with pytest.raises(WeightsIntegrityError, match="not a pe-zoo fine-tuned model"):
        zoo.load_pretrained_model(str(zoo.weights.resolve(CORE)))
    with pytest.raises(FileNotFoundError, match="no fine-tuned model file"):
        zoo.load_pretrained_model(str(tmp_path / "missing.safetensors"))


# ------------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_linear_probe_and_finetune_reach_high_accuracy(t16, tmp_path):
    """The full-size run: 48 coloured images at 64 px, 4 epochs each way; both reach >= 90% validation top-1."""
    data = write_folder(tmp_path / "data")
    common = dict(name=T16, data=data, epochs=4, batch_size=16, size=64, val_fraction=0.25, workers=0)
    _, val, _ = find_images(data, 0.25)
    val_paths, val_labels = [p for p, _ in val], np.array([i for _, i in val])

    probe_args = FinetuneArgs(out=tmp_path / "probe", linear_probe=True, lr=1e-2, **common)
    with Spy() as spy:
        probe = finetune(probe_args, progress=False)
    assert spy.images == 48  # embedded once: the epochs train on cached embeddings
    assert check_round_trip(probe, probe_args, val_paths, val_labels, accuracy=0.9)["best_val_top1"] >= 0.9

    ft_args = FinetuneArgs(out=tmp_path / "ft", lr=1e-3, warmup_epochs=0.5, drop_path=0.05, **common)
    with Spy() as spy:
        ft = finetune(ft_args, progress=False)
    assert spy.images == 4 * (32 + 12)  # every epoch: the (drop_last) training batches, then validation
    assert list(spy.block_runs.values()) == [4 * 2] * 12  # no checkpointing: each block once per step
    metrics = check_round_trip(ft, ft_args, val_paths, val_labels, accuracy=0.9)
    assert metrics["best_val_top1"] >= 0.9
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
