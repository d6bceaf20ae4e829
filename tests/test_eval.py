"""`python -m zoo eval`: zero-shot against open_clip's pipeline, retrieval and DINO's k-NN against brute force
written here, the linear probe on separable classes, Meta's published figures and --expect, bad input."""

import dataclasses
import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from PIL import Image
from timm.models.eva import checkpoint_filter_fn

import zoo
from tests.weights_env import CORE
from zoo.__main__ import main
from zoo.cards import render_card
from zoo.eval import DATASETS, compare, published_results
from zoo.eval.data import read_pairs
from zoo.eval.embed import Compute
from zoo.eval.knn import knn_scores
from zoo.eval.zeroshot import zeroshot
from zoo.paths import weights_dir
from zoo.registry import RegistryError, load_registry, parse_registry, registry_path
from zoo.testing.hub_cache import use_cache
from zoo.testing.synthetic import meta_clip_state_dict
from zoo.transforms import classification_transform
from zoo.weights import convert_checkpoint, convert_text_checkpoint, write_finetuned

COLOURS = {"cat": (150, 0, 0), "dog": (0, 150, 0), "fish": (0, 0, 150), "owl": (150, 150, 0)}
SIZE = "64"  # T16 at 64 px for every run but zero-shot against open_clip (at the native 384 px)
FAST = ["--size", SIZE, "--workers", "0"]


def write_folder(root, per_class: int, seed: int):
    """Four clearly different classes: noisy images of random sizes tinted by class, with a grey blob."""
    rng = np.random.default_rng(seed)
    for name, tint in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(40, 90, 2)
            img = rng.integers(0, 90, (h, w, 3)) + np.array(tint)
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            img[y:y + h // 3, x:x + w // 3] = 128
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


DEPTH = 2  # the registry's T16 cut to 2 vision and 2 text blocks keeps the tests fast
TEXT = dataclasses.replace(CORE.text, depth=DEPTH)
VISION = dataclasses.replace(CORE.config, depth=DEPTH)


@pytest.fixture(scope="module")
def env(module_tmp):
    """Converted PE-Core T16 CLIP weights (seeded Meta-layout file, offline Hub cache; 2 vision and 2 text blocks in
    the registry and the file) and generated image folders."""
    with pytest.MonkeyPatch.context() as mp, use_cache(module_tmp / "hub", offline=True):
        mp.setenv("ZOO_HOME", str(module_tmp / "zoo-home"))
        mp.setitem(load_registry(), CORE.name, dataclasses.replace(CORE, config=VISION, text=TEXT))
        state = meta_clip_state_dict(VISION, TEXT, seed=7)
        src = module_tmp / "PE-Core-T16-384.pt"
        torch.save(state, src)
        entry = load_registry()[CORE.name]
        convert_checkpoint(entry, src, weights_dir())
        convert_text_checkpoint(entry, src, weights_dir())
        yield {"state": state, "train": write_folder(module_tmp / "train", 4, 0), "val": write_folder(module_tmp / "val", 2, 1),
               "tmp": module_tmp}


def run_json(capsys, *argv) -> dict:
    assert main(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def one_line_error(capsys, argv, *needles):
    assert main(["eval", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


# ------------------------------------------------------------------------------------------------ zero-shot
def open_clip_model(state):
    text_cfg = {**open_clip.get_model_config("PE-Core-T-16-384")["text_cfg"], "layers": TEXT.depth}
    ref = open_clip.create_model("PE-Core-T-16-384", pretrained=None, text_cfg=text_cfg).eval()
    ref.visual.trunk.blocks = ref.visual.trunk.blocks[:DEPTH]  # timm's tower cut like the registry's
    vision = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    sd = {f"visual.trunk.{k}": v for k, v in checkpoint_filter_fn(vision, ref.visual.trunk).items()}
    sd.update({f"text.{k}": v for k, v in state.items() if not k.startswith("visual.") and k != "logit_scale"})
    ref.load_state_dict({**sd, "logit_scale": state["logit_scale"]})
    return ref


def test_zeroshot_equals_open_clip_pipeline(env, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a cat\na dog\na fish\nan owl\n")  # prompts use these, in the folders' sorted order
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of {}.\na blurry drawing of {}\n{} in the wild\n")
    got = zeroshot(CORE.name, env["val"], classnames=str(names), templates=str(templates),
                   compute=Compute(workers=0, progress=False))
    ref = open_clip_model(env["state"])
    tokenizer = open_clip.get_tokenizer("PE-Core-T-16-384")
    prompts = names.read_text().split("\n")[:4]
    with torch.no_grad():
        classifier = build_zero_shot_classifier(ref, tokenizer, prompts, templates.read_text().split("\n")[:3])
        preprocess = open_clip.image_transform(384, False, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash",
                                               interpolation="bilinear")
        paths = sorted(env["val"].glob("*/*.png"))
        images = torch.stack([preprocess(Image.open(p)) for p in paths])
        logits = ref.encode_image(images, normalize=True) @ classifier
    labels = torch.tensor([sorted(COLOURS).index(p.parent.name) for p in paths])
    assert torch.equal(got.labels, labels)
    want = torch.sort(logits, dim=1, descending=True, stable=True).indices
    assert torch.equal(torch.sort(got.scores, dim=1, descending=True, stable=True).indices, want)  # every image's full ranking
    m = got.metrics
    assert m["n"] == 8 and set(m["per_class"]) == set(COLOURS)
    assert m["top1"] == int((want[:, 0] == labels).sum()) / 8
    assert m["top5"] == 1.0 == float((want[:, :4] == labels[:, None]).any(1).float().mean())  # 4 classes: top-5 holds all
    for c, name in enumerate(sorted(COLOURS)):
        assert m["per_class"][name] == int((want[labels == c, 0] == c).sum()) / 2


def test_expect_compares_with_the_published_figure(env, capsys, tmp_path):
    """A run with --expect: the measured figure against Meta's, and exit status 1 when outside the tolerance."""
    out = tmp_path / "result.json"
    assert main(["eval", "zeroshot", CORE.name, "--data", str(env["val"]), "--templates", "simple", *FAST,
                 "--expect", "imagenet-1k", "--tolerance", "0.3", "--out", str(out)]) == 1
    result = json.loads(out.read_text())
    check = result["expect"]
    table = capsys.readouterr().out.splitlines()
    assert table[1:4] == ["8 images, 4 classes", f"top-1  {100 * result['top1']:6.2f} %", f"top-5  {100 * result['top5']:6.2f} %"]
    assert table[4].startswith(f"imagenet-1k: measured {check['measured']:.2f}, published 62.10") and "OUTSIDE the tolerance of 0.3" in table[4]
    assert check["published"] == 62.1 and check["measured"] == pytest.approx(100 * result["top1"])
    assert check["difference"] == pytest.approx(check["measured"] - 62.1) and check["ok"] is False
    inside = compare(CORE.name, "imagenet-1k", "zeroshot", {"top1": 0.6225}, tolerance=0.3)
    outside = compare(CORE.name, "imagenet-1k", "zeroshot", {"top1": 0.6245}, tolerance=0.3)
    assert inside["ok"] and not outside["ok"]
    coco = compare(CORE.name, "coco-t2i", "retrieval", {"text_to_image": {"recall@1": 0.33}})
    assert coco["ok"] and coco["tolerance"] == 0.3


# ------------------------------------------------------------------------------------------------ retrieval
def brute_force_recall(images, texts, captions, owner, k):
    """CLIP-paper recall@k by loops: same-text captions describe all their images."""
    describes = [{owner[j] for j in range(len(captions)) if captions[j] == c} for c in captions]
    t2i = []
    for j, t in enumerate(texts):
        order = sorted(range(len(images)), key=lambda i: -float(t @ images[i]))
        t2i.append(any(i in describes[j] for i in order[:k]))
    i2t = []
    for i, im in enumerate(images):
        order = sorted(range(len(texts)), key=lambda j: -float(im @ texts[j]))
        i2t.append(any(i in describes[j] for j in order[:k]))
    return sum(i2t) / len(i2t), sum(t2i) / len(t2i)


def test_retrieval_recall_equals_brute_force(env, capsys, tmp_path):
    paths = sorted(env["val"].glob("*/*.png")) + sorted(env["train"].glob("*/*.png"))[::2]  # 16 images
    rows, captions, owner = [], [], []
    for i, p in enumerate(paths):
        texts = [f"picture {i} of a {p.parent.name}"] + ([f"another {p.parent.name}", "the same words twice"] if i % 3 == 0 else [])
        rows.append({"image": str(p.relative_to(env["tmp"])), "caption": texts if len(texts) > 1 else texts[0]})
        captions += texts
        owner += [i] * len(texts)
    jsonl = env["tmp"] / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "recall.json"
    assert main(["eval", "retrieval", CORE.name, "--pairs", str(jsonl), *FAST, "--batch-size", "5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    table = capsys.readouterr().out.splitlines()
    t2i = "".join(f"{100 * result['text_to_image'][f'recall@{k}']:>8.2f}" for k in (1, 5, 10))
    assert table[1] == f"16 images, {len(captions)} captions" and table[4] == f"{'text to image':<14}{t2i}"
    assert result["images"] == 16 and result["captions"] == len(captions)

    clip = zoo.load_pretrained_clip(CORE.name, inference=True)
    transform = classification_transform(int(SIZE), CORE.rgb_stats)
    tokenizer = zoo.get_tokenizer(CORE.name)
    with torch.no_grad():  # one batch each, no DataLoader
        images = clip.encode_image(torch.stack([transform(Image.open(p)) for p in paths]), normalize=True)
        texts = clip.encode_text(tokenizer(captions), normalize=True)
    for k in (1, 5, 10):
        i2t, t2i = brute_force_recall(images, texts, captions, owner, k)
        assert result["image_to_text"][f"recall@{k}"] == pytest.approx(i2t, abs=1e-7)
        assert result["text_to_image"][f"recall@{k}"] == pytest.approx(t2i, abs=1e-7)
    assert result["text_to_image"]["recall@1"] < result["text_to_image"]["recall@10"]  # not all trivially 1

    # the CSV and COCO-captions forms of the same pairs read alike
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,caption\n" + "".join(f"{paths[o]},\"{c}\"\n" for c, o in zip(captions, owner)))
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps({"images": [{"id": 100 + i, "file_name": str(p)} for i, p in enumerate(paths)],
                                "annotations": [{"image_id": 100 + o, "caption": c} for c, o in zip(captions, owner)]}))
    want = read_pairs(jsonl)
    for other in (read_pairs(csv), read_pairs(coco, images_dir="/")):
        assert (other.images, other.captions, other.caption_image) == (want.images, want.captions, want.caption_image)


# ------------------------------------------------------------------------------------------------ k-NN
def dino_knn(train, train_labels, val, val_labels, k, classes, T=0.07):
    """DINO's weighted k-NN (eval_knn.py's formula) in NumPy: the votes [N, C], top-1 and top-5 fractions."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    val = val / np.linalg.norm(val, axis=1, keepdims=True)
    top1 = top5 = 0
    all_votes = np.zeros((len(val), classes))
    for v, label, votes in zip(val, val_labels, all_votes):
        sims = train @ v
        nearest = np.argsort(-sims, kind="stable")[:k]
        for j in nearest:
            votes[train_labels[j]] += np.exp(sims[j] / T)
        ranking = np.argsort(-votes, kind="stable")
        top1 += ranking[0] == label
        top5 += label in ranking[:min(5, k)]
    return all_votes, top1 / len(val), top5 / len(val)


def folder_embeddings(net, transform, root):
    paths = sorted(root.glob("*/*.png"))
    with torch.no_grad():  # one batch, no DataLoader: the CLI's rows must come out the same
        rows = net.embedding(torch.stack([transform(Image.open(p)) for p in paths])).numpy()
    return rows, np.array([sorted(COLOURS).index(p.parent.name) for p in paths])


def test_knn_equals_dino_formula_and_reads_embed_folders(env, capsys):
    args = ["--val", str(env["val"]), "-k", "3", *FAST]
    result = run_json(capsys, "knn", CORE.name, "--train", str(env["train"]), *args)
    net, info = zoo.load_pretrained_model(CORE.name, inference=True, new_size=int(SIZE))
    transform = classification_transform(info.size, info.rgb_stats)
    train, train_labels = folder_embeddings(net, transform, env["train"])
    val, val_labels = folder_embeddings(net, transform, env["val"])
    _, top1, top5 = dino_knn(train, train_labels, val, val_labels, 3, len(COLOURS))
    assert (result["top1"], result["top5"]) == (top1, top5)
    assert result["n"] == 8
    # the votes themselves, with the training set scanned in three uneven blocks and k = 7 across them
    votes, _, _ = dino_knn(train, train_labels, val, val_labels, 7, len(COLOURS))
    blocks = [train[:5], train[5:6], train[6:]]  # 16 rows
    got = knn_scores(blocks, torch.as_tensor(train_labels), F.normalize(torch.as_tensor(val), dim=-1), len(COLOURS), k=7)
    assert np.abs(votes).max() > 1e3 and np.allclose(got.numpy(), votes, rtol=1e-5, atol=0)

    emb = env["tmp"] / "emb-train"
    assert main(["embed", CORE.name, str(env["train"]), "--out", str(emb), "--store-dtype", "float32", *FAST]) == 0
    capsys.readouterr()
    again = run_json(capsys, "knn", CORE.name, "--train", str(emb), *args)
    assert (again["top1"], again["top5"], again["per_class"]) == (result["top1"], result["top5"], result["per_class"])
    emb_val = env["tmp"] / "emb-val"  # both sides read from zoo embed folders: no image is embedded again
    assert main(["embed", CORE.name, str(env["val"]), "--out", str(emb_val), "--store-dtype", "float32", *FAST]) == 0
    capsys.readouterr()
    both = run_json(capsys, "knn", CORE.name, "--train", str(emb), "--val", str(emb_val), "-k", "3")
    assert (both["top1"], both["top5"], both["per_class"]) == (result["top1"], result["top5"], result["per_class"])


# ------------------------------------------------------------------------------------------------ linear probe
def test_linear_probe_separable_classes_out_and_plot(env, capsys, tmp_path):
    out, png = tmp_path / "probe.json", tmp_path / "classes.png"
    result = run_json(capsys, "linear", CORE.name, "--train", str(env["train"]), "--val", str(env["val"]), *FAST,
                      "--out", str(out), "--plot", str(png))
    assert result["top1"] >= 0.9 and result["top5"] == 1.0 and result["n"] == 8
    assert json.loads(out.read_text()) == result
    with Image.open(png) as chart:
        assert chart.format == "PNG" and chart.width > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.png", "probe.json"]  # no temporary left behind


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_gives_one_line_errors(env, capsys, tmp_path):
    empty = tmp_path / "empty"
    for name in ("cat", "dog"):
        (empty / name).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(empty / "cat" / "a.png")
    one_line_error(capsys, ["knn", CORE.name, "--train", str(empty), "--val", str(env["val"]), *FAST],
                   f"class folder {empty / 'dog'} holds no images")
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nfish\n")
    one_line_error(capsys, ["zeroshot", CORE.name, "--data", str(env["val"]), "--classnames", str(names)],
                   "has 3 names but", "4 class folders")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"image,caption\n{sorted(env['val'].glob('*/*.png'))[0]},a cat\nmissing.png,a dog\n")
    one_line_error(capsys, ["retrieval", CORE.name, "--pairs", str(pairs)], "line 3 names the image", "missing.png", "does not exist")
    spatial = "rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial"
    one_line_error(capsys, ["linear", spatial, "--train", str(env["train"]), "--val", str(env["val"]), "--expect", "imagenet-1k"],
                   "no published 'imagenet-1k' figure", "ade20k-linear, davis")
    one_line_error(capsys, ["zeroshot", CORE.name, "--data", str(env["val"]), "--expect", "kinetics-400"], "video")
    one_line_error(capsys, ["knn", CORE.name, "--train", str(env["train"]), "--val", str(env["val"]), "--expect", "coco-t2i"],
                   "`python -m zoo eval retrieval`")


# ------------------------------------------------------------------------------------------------ published figures
def test_published_results_registry_and_cards():
    l14 = published_results("rope_i_vit_l14_pn_aps_c1_pe-core")
    assert l14["results"]["imagenet-1k"] == 83.5 and l14["results"]["coco-t2i"] == 57.1 and l14["url"].startswith("https://github.com/")
    k400 = [published_results(f"rope_i_vit_{v}_pn_aps_c1_pe-core")["results"] for v in ("b16", "l14")]
    assert [r["kinetics-400"] for r in k400] == [65.6, 73.4] and k400[0]["msr-vtt-t2v"] == 47.6  # issue 24's figures
    assert zoo.published_results is published_results
    for entry in load_registry().values():  # Meta publishes no figures for the -Tiling releases
        if not entry.variant.endswith("-Tiling"):
            assert entry.published and set(entry.published["results"]) <= set(DATASETS), entry.name
        else:
            assert entry.published is None and published_results(entry.name)["results"] == {}
    card = render_card("rope_i_vit_l14_pn_aps_c1_pe-core")
    assert "| ImageNet-1k val | zero-shot top-1 % | 83.5 |" in card and l14["url"] in card
    text = registry_path().read_text()
    bad = text.replace("results: {imagenet-1k: 62.1", "results: {imagenet-1k: 162.1", 1)
    with pytest.raises(RegistryError, match="published.results.imagenet-1k' must be a number from 0 to 100"):
        parse_registry(bad)
    with pytest.raises(RegistryError, match="published.url"):
        parse_registry(text.replace("url: https://github.com", "url: github.com", 1))


# ------------------------------------------------------------------------------------------------ fine-tuned files
def test_fine_tuned_file_in_place_of_name(env, tmp_path):
    """A `zoo finetune` file is evaluated with its own vision tower (here: the base's with the CLIP projection
    negated, so every cosine score flips sign) and its base checkpoint's text tower, at its training size."""
    net, _ = zoo.load_pretrained_model(CORE.name)
    net.reset_classifier(len(COLOURS))
    state = {k: -v if k == "clip_proj.weight" else v for k, v in net.state_dict().items()}
    path = tmp_path / "model.safetensors"
    write_finetuned(path, state, {"base": CORE.name, "base_sha256": None, "tensors": "full",
                                                   "class_to_idx": {c: i for i, c in enumerate(sorted(COLOURS))}, "size": [64, 64]})
    compute = Compute(workers=0, progress=False)
    base = zeroshot(CORE.name, env["val"], templates="simple", compute=dataclasses.replace(compute, size=int(SIZE)))
    tuned = zeroshot(str(path), env["val"], templates="simple", compute=compute)  # the file's training size: 64
    assert base.scores.abs().max() > 0.05 and torch.allclose(tuned.scores, -base.scores, atol=1e-6)
