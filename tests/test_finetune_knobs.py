"""Fine-tuning knobs (issue 10 section 1): drop path, gradient checkpointing, param_groups, freeze."""

import dataclasses

import numpy as np
import pytest
import torch

import zoo
from zoo.nets.pe_vit import Linear, drop_path
from zoo.registry import get_entry

NAME = "rope_i_vit_t16_pn_aps_c1_pe-core"
SPATIAL_G = "rope_i_vit_g14_pn_npn_avg_ls_c1_pe-spatial"  # layer scale, no cls token
CFG = dataclasses.replace(get_entry(NAME).config, depth=3)


def net_of(cfg=CFG, **kw):
    torch.manual_seed(0)
    net = zoo.PEViT(cfg, **kw)
    net.reset_classifier(4)
    return net


def x_of(n=2, cfg=CFG):
    return torch.randn(n, 3, 2 * cfg.patch_size, 2 * cfg.patch_size, generator=torch.Generator().manual_seed(1))


def test_drop_path_rates_rise_linearly_and_create_model_and_loader_take_them():
    net = zoo.create_model(NAME, num_classes=5, drop_path_rate=0.3)
    rates = [b.drop_path for b in net.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert np.allclose(np.diff(rates), 0.3 / (len(rates) - 1))
    assert net.num_classes == 5 and net.head.out_features == 5
    with pytest.raises(ValueError, match="drop_path_rate"):
        zoo.PEViT(CFG, drop_path_rate=1.0)


def test_eval_outputs_bit_identical_with_drop_path():
    x = x_of()
    plain, dropped = net_of(), net_of(drop_path_rate=0.5)
    dropped.load_state_dict(plain.state_dict())
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            assert torch.equal(plain.eval()(x), dropped.eval()(x))


def test_drop_path_is_active_in_training_only_and_per_sample():
    x = x_of(8)
    net = net_of(drop_path_rate=0.5).train()
    a, b = net(x), net(x)
    assert not torch.allclose(a, b)  # random in training
    y = torch.ones(1000, 3, 4)
    out = drop_path(y, 0.25)
    per_sample = out[:, 0, 0]
    assert set(per_sample.unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}
    assert torch.all(out == per_sample[:, None, None])  # one decision per sample
    assert 0.15 < (per_sample == 0).float().mean() < 0.35
    net0 = net_of().train()
    net0.load_state_dict(net.state_dict())
    assert torch.equal(net0(x), net0.eval()(x))  # rate 0: training mode changes nothing


@pytest.mark.parametrize("name", [NAME, SPATIAL_G])
def test_grad_checkpointing_gives_the_same_gradients(name):
    cfg = dataclasses.replace(get_entry(name).config, depth=2, width=96, heads=3, mlp_dim=192)
    net = net_of(cfg, drop_path_rate=0.2).train()
    x = x_of(3, cfg)
    grads, runs = [], [0] * len(net.blocks)
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: runs.__setitem__(i, runs[i] + 1)) for i, b in enumerate(net.blocks)]
    for ckpt in (False, True):
        runs[:] = [0] * len(net.blocks)
        net.set_grad_checkpointing(ckpt)
        net.zero_grad(set_to_none=True)
        torch.manual_seed(123)  # same drop-path draws in both runs
        net(x).square().mean().backward()
        assert runs == [2 if ckpt else 1] * len(net.blocks)  # on: every block runs again in backward; off: none
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    runs[:] = [0] * len(net.blocks)
    with torch.no_grad():
        net(x)
    assert runs == [1] * len(net.blocks)  # nothing to recompute without gradients
    for h in hooks:
        h.remove()
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for n, g in grads[0].items():
        assert (grads[1][n] - g).abs().max() <= 1e-6 * g.abs().max() + 1e-12, n


def test_param_groups_decay_and_layer_decay():
    net = net_of()
    net.freeze(blocks=1)
    groups = zoo.param_groups(net, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert len(seen) == len(set(seen)) and set(seen) == trainable  # each trainable one exactly once
    by_name = {n: g for g in groups for n in g["names"]}
    depth = len(net.blocks)
    assert by_name["head.weight"]["lr"] == pytest.approx(1e-3)
    assert by_name["blocks.2.mlp.fc1.weight"]["lr"] == pytest.approx(1e-3 * 0.5 ** (depth - 2))
    assert by_name["blocks.1.attn.qkv.weight"]["lr"] == pytest.approx(1e-3 * 0.5 ** (depth - 1))
    assert by_name["blocks.1.attn.qkv.weight"]["weight_decay"] == 0.05
    for n in ("blocks.1.attn.qkv.bias", "blocks.1.norm1.weight", "attn_pool.probe", "head.bias"):
        assert by_name[n]["weight_decay"] == 0.0, n
    full = zoo.param_groups(net_of(), lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    names = {n: g for g in full for n in g["names"]}
    for n in ("pos_embed", "cls_token", "patch_embed.weight"):
        assert names[n]["lr"] == pytest.approx(1e-3 * 0.5 ** (depth + 1)), n
    assert names["pos_embed"]["weight_decay"] == names["cls_token"]["weight_decay"] == 0.0
    assert names["patch_embed.weight"]["weight_decay"] == 0.05
    ls = zoo.param_groups(zoo.PEViT(dataclasses.replace(get_entry(SPATIAL_G).config, depth=1)), 1.0, 0.1)
    assert {n: g["weight_decay"] for g in ls for n in g["names"]}["blocks.0.ls1.gamma"] == 0.0
    torch.optim.AdamW(groups)  # accepted by torch


def test_freeze_linear_probe_and_first_blocks():
    x = x_of()
    net = net_of(drop_path_rate=0.5)
    net.freeze()
    net.train()
    assert net.head.training and not any(m.training for n, m in net.named_modules() if n and not n.startswith("head"))
    a, b = net.embedding(x), net.embedding(x)
    assert torch.equal(a, b)  # frozen: no drop path
    net(x).sum().backward()
    assert all((p.grad is None) != n.startswith("head.") for n, p in net.named_parameters())

    net = net_of(drop_path_rate=0.5)
    net.freeze(blocks=np.int64(2))
    net.train()
    net(x).sum().backward()
    for n, p in net.named_parameters():
        if n.startswith("clip_proj."):
            continue  # not used by forward (the head sits on the embedding)
        frozen = n.startswith(("patch_embed", "cls_token", "pos_embed", "norm_pre", "blocks.0.", "blocks.1."))
        assert (p.grad is None) == frozen, n
    assert not net.blocks[1].training and net.blocks[2].training
    with pytest.raises(ValueError, match=r"blocks must be in \[0, 3\]"):
        net.freeze(blocks=4)
    with pytest.raises(TypeError, match="integer"):
        net.freeze(blocks=1.0)


def test_training_step_then_inference_matches_a_fresh_net(float32_packing):
    x = x_of()
    net = net_of()
    net.freeze(blocks=1)  # frozen blocks may run packed inside a training step (no gradient needed there)
    opt = torch.optim.AdamW(zoo.param_groups(net, 1e-2, 0.05, 0.9))
    with torch.no_grad():
        net.eval()(x)  # weights packed before training
    net.train()
    net(x).square().mean().backward()
    opt.step()
    opt.zero_grad()
    net.eval()
    with torch.no_grad():
        out = net(x)
        assert any(zoo.nets.packing.is_packed(m) for m in net.modules() if isinstance(m, Linear))
    fresh = net_of()
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(out, fresh.eval()(x))
        ref = fresh(x)
    zoo.nets.pe_vit.set_packing(fresh, False)
    with torch.no_grad():
        assert (fresh(x) - ref).abs().max() <= 1e-5
