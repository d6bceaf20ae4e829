"""The oneDNN-packed Linear can never serve a stale weight, and packs in place (no second copy).

Every way a weight can change is applied after a first no-grad call has packed the weights; the net
must then give exactly what a fresh net holding the same weights gives (and F.linear, within float
tolerance, for the layer itself).
"""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.nets import pe_vit
from zoo.nets.pe_vit import Linear, set_packing
from zoo.registry import get_entry

pytestmark = pytest.mark.usefixtures("float32_packing")  # float32 packs here on any CPU

CFG = dataclasses.replace(get_entry("rope_i_vit_t16_pn_aps_c1_pe-core").config, depth=2)
X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def net_with_packed_weights(dtype=torch.float32):
    net = zoo.PEViT(CFG).to(dtype).eval()
    with torch.no_grad():
        net.clip_embedding(X.to(dtype))
    assert all(m.weight.is_mkldnn for m in linears(net))  # packed in place by the first call
    return net


def linears(net):
    return [m for m in net.modules() if isinstance(m, Linear)]


def fresh_output(net, x=X):
    """What a newly built net holding ``net``'s current weights gives (packs its own weights)."""
    other = zoo.PEViT(CFG).eval()
    other.load_state_dict(net.state_dict())
    other = other.to(next(iter(net.state_dict().values())).dtype)
    with torch.no_grad():
        return other.clip_embedding(x.to(other.pos_embed.dtype))


def output(net, x=X):
    with torch.no_grad():
        return net.clip_embedding(x.to(net.pos_embed.dtype))


def assert_serves_current_weights(net, exact=True):
    out = output(net)
    ref = fresh_output(net)
    assert torch.equal(out, ref) if exact else (out - ref).abs().max() <= 1e-5
    return out


def test_layer_matches_f_linear_and_packs_in_place():
    lin = Linear(64, 96)
    x = torch.randn(5, 64)
    held = lin.weight  # a reference taken before packing
    with torch.no_grad():
        y = lin(x)
    assert held.is_mkldnn and lin.weight is held  # the parameter itself became the packed weight
    ref = F.linear(x, lin.weight.detach(), lin.bias.detach())  # reading it turns it back first
    assert not held.is_mkldnn
    assert (y - ref).abs().max() <= 1e-5


def test_optimizer_step():
    net = net_with_packed_weights().train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    before = output(net)
    net.train()
    net.clip_embedding(X).square().mean().backward()
    opt.step()
    opt.zero_grad()
    net.eval()
    output(net)
    assert all(m.weight.is_mkldnn for m in linears(net))  # grads cleared: inference packs again
    after = assert_serves_current_weights(net)
    assert (after - before).abs().max() > 1e-3  # the step changed what the net computes


def test_no_packing_while_gradients_are_pending():
    net = net_with_packed_weights().train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.clip_embedding(X).square().mean().backward()
    output(net)  # an evaluation between backward and step must not capture the weights
    assert not any(m.weight.is_mkldnn for m in linears(net))
    before = output(net)
    opt.step()
    after = assert_serves_current_weights(net, exact=False)  # plain F.linear (grads still there) vs packed
    assert (after - before).abs().max() > 1e-3


def test_load_state_dict_outside_and_inside_inference_mode():
    net = net_with_packed_weights()
    other = zoo.PEViT(CFG).state_dict()
    net.load_state_dict(other)
    assert_serves_current_weights(net)
    with torch.inference_mode():  # built, used and loaded inside inference mode
        inner = zoo.PEViT(CFG).eval()
        inner.clip_embedding(X)
        inner.load_state_dict(zoo.PEViT(CFG).state_dict())
        out = inner.clip_embedding(X)
    assert torch.equal(out, fresh_output(inner))


@pytest.mark.parametrize("held", [False, True])
def test_data_edits_and_copy_under_no_grad(held):
    net = net_with_packed_weights()
    lin = net.blocks[0].mlp.fc1
    w = lin.weight
    target = (lambda: w) if held else (lambda: lin.weight)
    target().data.mul_(-1.5)
    assert_serves_current_weights(net)
    output(net)
    with torch.no_grad():
        target().copy_(torch.randn(w.shape))
    assert_serves_current_weights(net)
    output(net)
    target().data.zero_()
    out = output(net)
    assert torch.equal(out, fresh_output(net))
    assert torch.count_nonzero(lin.weight) == 0


def test_to_dtype_and_to_empty_then_load():
    net = net_with_packed_weights()
    sd = copy.deepcopy(net.state_dict())
    net = net.to(torch.bfloat16)
    assert net.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    out = output(net)
    assert torch.equal(out, fresh_output(net))
    net.to(torch.float32)
    output(net)
    net.to_empty(device="cpu")
    net.load_state_dict(sd)
    assert torch.equal(output(net), fresh_output(net))


def test_state_dict_parameters_and_copies_are_plain():
    net = net_with_packed_weights()
    n = sum(p.numel() for p in net.parameters())  # metadata needs no unpacking
    assert n == sum(p.numel() for p in zoo.PEViT(CFG).parameters())
    assert all(not t.is_mkldnn for t in net.state_dict().values())
    output(net)
    twin = copy.deepcopy(net)
    assert all(not p.is_mkldnn for p in twin.parameters() if p.sum() is not None)
    assert torch.equal(output(twin), output(net))


def test_gradients_never_come_from_the_packed_weight():
    lin = Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    with torch.no_grad():
        lin(x)
    y = lin(x, gelu=True)
    assert y.requires_grad and not lin.weight.is_mkldnn
    y.sum().backward()
    w, b = lin.weight.detach().clone().requires_grad_(), lin.bias.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    F.gelu(F.linear(x2, w, b)).sum().backward()
    assert torch.allclose(lin.weight.grad, w.grad, atol=1e-6) and torch.allclose(x.grad, x2.grad, atol=1e-6)


def test_set_packing_off_unpacks():
    net = net_with_packed_weights()
    set_packing(net, False)
    assert not any(m.weight.is_mkldnn for m in linears(net))
    output(net)
    assert not any(m.weight.is_mkldnn for m in linears(net))


def test_float32_packing_follows_the_cpu_and_can_be_turned_off(monkeypatch):
    """Default: float32 packs except on Intel CPUs with MKL (whose sgemm beats oneDNN's packed float32
    kernel there); off, float32 runs plain ``F.linear`` (bit for bit ``set_packing(False)``) and
    bfloat16 still packs."""
    vendor = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("vendor_id")), "")
    assert pe_vit._float32_packing_pays() == (not (torch.backends.mkl.is_available() and vendor == "GenuineIntel"))
    monkeypatch.setattr(Linear, "pack_float32", False)
    net = zoo.PEViT(CFG).eval()
    out = output(net)
    assert not any(m.weight.is_mkldnn for m in linears(net))
    plain = copy.deepcopy(net)
    set_packing(plain, False)
    assert torch.equal(out, output(plain))
    half = zoo.PEViT(CFG).to(torch.bfloat16).eval()
    output(half)
    assert all(m.weight.is_mkldnn for m in linears(half))
