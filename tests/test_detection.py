"""zoo.detection: the ViTDet pyramid's levels and exact strides (boxes pool from the pixels they cover, also
for patch 14), and torchvision's Faster/Mask R-CNN over it on generated images of coloured rectangles."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, box_iou

from tests.weights_env import CORE, add_meta_source, hub  # noqa: F401 (fixture)
from zoo import detection
from zoo.detection import FeaturePyramid, faster_rcnn, mask_rcnn
from zoo.loader import load_pretrained_model
from zoo.nets.pe_vit import PEViT
from zoo.paths import weights_dir
from zoo.registry import get_entry

T16 = CORE.name
L14 = "rope_i_vit_reg1_l14_pn_npn_avg_c1_pe-spatial"
COLOURS = {1: (1.0, 0.1, 0.1), 2: (0.1, 0.2, 1.0)}  # class -> RGB in [0, 1]
# small images and fewer sampled anchors/proposals keep a CPU training step at a second or two
SMALL = dict(min_size=128, max_size=128, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
             rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100)


def small_net(name: str, depth: int = 1) -> PEViT:
    return PEViT(dataclasses.replace(get_entry(name).config, depth=depth))


def local_net(name: str) -> PEViT:
    """A one-block net whose block is the identity (zero output projections): each token sees only its own
    patch, so where a change shows up in the maps is decided by the geometry alone."""
    net = small_net(name)
    with torch.no_grad():
        for lin in (net.blocks[0].attn.proj, net.blocks[0].mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
    return net.eval()


def rectangles(n: int, size: int = 128, seed: int = 0, masks: bool = False):
    """``n`` images [3, size, size] in [0, 1] (grey noise) with one or two coloured rectangles each, and
    torchvision detection targets (boxes, labels, and masks when asked)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        img = 0.45 + 0.1 * torch.rand(3, size, size, generator=g)
        boxes, labels, ms = [], [], []
        for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
            w, h = (int(v) for v in torch.randint(size // 5, size // 2, (2,), generator=g))
            x0, y0 = int(torch.randint(0, size - w, (1,), generator=g)), int(torch.randint(0, size - h, (1,), generator=g))
            label = int(torch.randint(1, 3, (1,), generator=g))
            img[:, y0:y0 + h, x0:x0 + w] = torch.tensor(COLOURS[label]).view(3, 1, 1)
            m = torch.zeros(size, size, dtype=torch.uint8)
            m[y0:y0 + h, x0:x0 + w] = 1
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(label)
            ms.append(m)
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
        if masks:  # a later rectangle paints over an earlier one
            target["masks"] = torch.stack([m * (1 - sum(ms[i + 1:], torch.zeros_like(m))).clamp(min=0) for i, m in enumerate(ms)])
        images.append(img)
        targets.append(target)
    return images, targets


# ------------------------------------------------------------------------------------------------ pyramid
@pytest.mark.parametrize("name", [T16, L14], ids=["patch16", "patch14"])
def test_pyramid_levels_have_exact_power_of_two_strides(name):
    net = small_net(name)
    fp = FeaturePyramid(net, out_channels=32, top_pool=True)
    assert fp.strides == (4, 8, 16, 32, 64) and fp.out_channels == 32
    for H, W in [(256, 192), (208, 176)]:  # non-square; the second not a multiple of 32
        with torch.no_grad():
            out = fp(torch.randn(2, 3, H, W))
        assert list(out) == ["0", "1", "2", "3", "pool"]
        for (key, m), s in zip(out.items(), fp.strides):  # cell i of a level covers pixels [s*i, s*(i+1))
            assert m.shape == (2, 32, math.ceil(H / s), math.ceil(W / s)), key
        # what torchvision infers from those sizes is the real stride
        pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
        pooler(out, [torch.tensor([[10.0, 20.0, 90.0, 120.0]])] * 2, [(H, W)] * 2)
        assert pooler.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]


@pytest.mark.parametrize("name", [T16, L14], ids=["patch16", "patch14"])
def test_box_pools_from_the_pixels_it_covers(name):
    """A bright square changes the maps. At the strides torchvision's ``MultiScaleRoIAlign`` infers, the change is
    centred on the square at every level, and pooling the square's own box picks up far more of it than pooling
    a box beside it. (A stride-14 map read as stride 16 puts the change 16 to 48 px away.)"""
    fp = FeaturePyramid(local_net(name), out_channels=32).eval()
    H = W = 448
    box = (224, 96, 352, 224)  # x0, y0, x1, y1: a 128 px square away from the image centre
    blank = torch.zeros(1, 3, H, W)
    square = blank.clone()
    square[:, :, box[1]:box[3], box[0]:box[2]] = 2.0
    with torch.no_grad():
        change = {k: a - b for (k, a), b in zip(fp(square).items(), fp(blank).values())}
    pooler = MultiScaleRoIAlign(list(change), 7, 2)
    pooler(change, [torch.tensor([box], dtype=torch.float32)], [(H, W)])
    for (key, c), scale in zip(change.items(), pooler.scales):
        energy = c.pow(2).sum(1)[0]
        stride = 1 / scale
        centre_y = (energy.sum(1) * (torch.arange(energy.shape[0]) + 0.5)).sum() / energy.sum() * stride
        centre_x = (energy.sum(0) * (torch.arange(energy.shape[1]) + 0.5)).sum() / energy.sum() * stride
        assert abs(centre_x - (box[0] + box[2]) / 2) <= 8 and abs(centre_y - (box[1] + box[3]) / 2) <= 8, (key, centre_x, centre_y)

        single = MultiScaleRoIAlign([key], 7, 2)

        def pooled(dx: int, dy: int) -> float:
            b = torch.tensor([[box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy]], dtype=torch.float32)
            return single({key: c}, [b], [(H, W)]).norm().item()

        beside = [(128, 0), (-128, 0), (0, 128), (0, -128)]  # the non-overlapping neighbours
        assert max(pooled(dx, dy) for dx, dy in beside) < 0.5 * pooled(0, 0), key


def test_pyramid_rejects_bad_input():
    net = small_net(T16)
    with pytest.raises(ValueError, match="multiples of 16"):
        FeaturePyramid(net)(torch.randn(1, 3, 112, 120))
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        FeaturePyramid(net, layer=5)
    with pytest.raises(TypeError, match="layer must be an integer"):
        FeaturePyramid(net, layer=1.0)
    assert FeaturePyramid(net, layer=np.int64(-1)).layer == FeaturePyramid(net, layer=-1).layer == len(net.blocks) - 1
    with pytest.raises(ValueError, match="power of two"):
        FeaturePyramid(net, scales=(3.0, 1.0))


def test_pyramid_layer_and_frozen_unused_parts():
    """``layer`` picks the block whose output feeds the pyramid; parts after it get no gradient and are frozen."""
    net = small_net(T16, depth=3)
    fp = FeaturePyramid(net, out_channels=16, layer=1)
    x = torch.randn(1, 3, 64, 64)
    expected = net.detection_features(x, layers=[1])["block1"]
    assert torch.equal(fp.backbone_map(x), expected)
    sum(m.sum() for m in fp(x).values()).backward()
    assert all(p.grad is not None for p in net.blocks[1].parameters())
    frozen = [*net.blocks[2].parameters(), *net.norm_post.parameters(), *net.attn_pool.parameters(), *net.clip_proj.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in frozen)


# ---------------------------------------------------------------------------------------------- detectors
def _train(model, images, targets, steps: int, lr: float = 1e-4) -> list[dict[str, float]]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        parts = model(images, targets)
        loss = sum(parts.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append({"total": loss.item(), **{k: v.item() for k, v in parts.items()}})
    return losses


def _check_predictions(model, images, build, size):
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == len(images)
    keys = {"boxes", "labels", "scores"} | ({"masks"} if build is mask_rcnn else set())
    for o in out:
        assert set(o) == keys and o["boxes"].shape[1:] == (4,) and o["labels"].dtype == torch.int64
        assert len(o["boxes"]) == len(o["labels"]) == len(o["scores"]) > 0
        if build is mask_rcnn:
            assert o["masks"].shape == (len(o["boxes"]), 1, size, size)


@pytest.mark.parametrize("build", [faster_rcnn, mask_rcnn], ids=["faster", "mask"])
def test_detector_training_step_reaches_every_part(build):
    """One training step at 64 px: every loss, finite; a gradient in every trainable part (backbone blocks,
    pyramid, RPN, box head and mask head); then predictions of the right form. The -m slow case trains longer."""
    torch.manual_seed(0)
    model = build(T16, num_classes=3, pretrained=False, **dict(SMALL, min_size=64, max_size=64, box_score_thresh=0.0))
    t = model.transform
    assert t.image_mean == [0.5] * 3 and t.image_std == [0.5] * 3  # the checkpoint's statistics, not ImageNet's
    assert t.size_divisible == 64 and isinstance(model.backbone, FeaturePyramid)
    images, targets = rectangles(1, size=64, masks=build is mask_rcnn)
    model.train()
    parts = model(images, targets)
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} | ({"loss_mask"} if build is mask_rcnn else set())
    assert set(parts) == expected and all(torch.isfinite(v) and v > 0 for v in parts.values()), parts
    sum(parts.values()).backward()
    prefixes = ["backbone.net.blocks.0.", "backbone.net.blocks.11.", "backbone.levels.", "rpn.head.", "roi_heads.box_head.",
                "roi_heads.box_predictor."] + (["roi_heads.mask_head.", "roi_heads.mask_predictor."] if build is mask_rcnn else [])
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for prefix in prefixes:
        got = [g for n, g in grads.items() if n.startswith(prefix)]
        assert got and all(g is not None for g in got) and any(g.abs().sum() > 0 for g in got), prefix
    _check_predictions(model, images, build, 64)


@pytest.mark.slow
@pytest.mark.parametrize("build", [faster_rcnn, mask_rcnn], ids=["faster", "mask"])
def test_detector_trains_and_predicts(build):
    torch.manual_seed(0)
    model = build(T16, num_classes=3, pretrained=False, **SMALL)
    images, targets = rectangles(2, masks=build is mask_rcnn)
    first, *_, last = _train(model, images, targets, steps=5)
    # box regression losses rise at first (more proposals become positive); the classification losses fall
    for key in ("total", "loss_classifier") + (("loss_mask",) if build is mask_rcnn else ()):
        assert last[key] < 0.9 * first[key], (key, first, last)
    assert last["loss_objectness"] < first["loss_objectness"]
    _check_predictions(model, images[:2], build, 128)


def test_detector_patch14_pads_to_exact_strides():
    """A patch-14 backbone in a detector: an odd-sized image is padded to a multiple of 64 and every level's
    stride is exact."""
    net = small_net(L14)
    from torchvision.models.detection import FasterRCNN

    fp = FeaturePyramid(net, out_channels=32, top_pool=True)
    stats = get_entry(L14).rgb_stats
    model = FasterRCNN(fp, num_classes=3, min_size=150, max_size=200, **detection._detector_kwargs(fp, stats, {})).eval()
    with torch.no_grad():
        images, _ = model.transform([torch.rand(3, 150, 190)])
        feats = model.backbone(images.tensors)
        out = model([torch.rand(3, 150, 190)])
    h, w = images.tensors.shape[-2:]
    assert (h, w) == (192, 192)
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(h // s, w // s) for s in fp.strides]
    assert set(out[0]) == {"boxes", "labels", "scores"}
    with pytest.raises(ValueError, match="size_divisible=48"):
        detection._detector_kwargs(fp, stats, {"size_divisible": 48})


def test_pretrained_backbone_from_the_hub_cache(hub, tmp_path):
    """pretrained=True loads (and verifies) the checkpoint's weights; pretrained=False never looks for them."""
    add_meta_source(hub, CORE, tmp_path)
    net, _ = load_pretrained_model(T16)
    model = faster_rcnn(T16, num_classes=2, freeze_blocks=2)
    state = model.backbone.net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    frozen = [*model.backbone.net.patch_embed.parameters(), *model.backbone.net.blocks[1].parameters()]
    assert all(not p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in model.backbone.net.blocks[2].parameters())

    empty = tmp_path / "empty"
    random_model = mask_rcnn(T16, num_classes=2, pretrained=False, weights_dir=empty)
    assert not empty.exists()
    assert not torch.equal(random_model.backbone.net.pos_embed, net.pos_embed)


def test_pretrained_without_weights_fails_clearly(hub, tmp_path):
    from zoo.weights import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError):
        faster_rcnn(T16, num_classes=2)
    assert not any(weights_dir().glob("*.safetensors"))


@pytest.mark.slow
def test_faster_rcnn_overfits_rectangles():
    """A handful of images, trained until the rectangles are found: every box matched with IoU >= 0.5 and the right label."""
    torch.manual_seed(0)
    model = faster_rcnn(T16, num_classes=3, pretrained=False, **SMALL)
    images, targets = rectangles(4, seed=1)
    _train(model, images, targets, steps=150, lr=2e-4)
    model.eval()
    with torch.no_grad():
        out = model(images)
    for o, t in zip(out, targets):
        keep = o["scores"] > 0.5
        iou = box_iou(t["boxes"], o["boxes"][keep])
        assert iou.shape[1] > 0
        best = iou.max(dim=1)
        assert (best.values >= 0.5).all(), best.values
        assert torch.equal(o["labels"][keep][best.indices], t["labels"])
