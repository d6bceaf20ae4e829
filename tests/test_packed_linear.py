"""The oneDNN-packed Linear: weights stay plain parameters, the packed copy is never stale, and a
memory-mapped weight's pages go back to the OS once packed.

Every way a weight can change is applied after a first no-grad call has packed the weights; the net
must then give what a fresh net holding the same weights gives (and ``F.linear``, within float
tolerance, for the layer itself).
"""

import copy
import dataclasses
import functools
import mmap
import os
import struct

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import zoo
from zoo.nets import packing
from zoo.nets.packing import Linear, is_packed, set_packing
from zoo.registry import get_entry
from zoo.weights import read_tensors

pytestmark = pytest.mark.usefixtures("float32_packing")  # float32 packs here on any CPU

CFG = dataclasses.replace(get_entry("rope_i_vit_t16_pn_aps_c1_pe-core").config, depth=2)
X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@functools.cache
def _state():
    return zoo.PEViT(CFG).state_dict()


def new_net(seed=0):
    """A T16 net (depth 2) with random weights, without paying ``init_weights`` again (slow on a busy CPU)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        net = zoo.PEViT(CFG)
    state = {k: v + 0.02 * torch.randn(v.shape, generator=g) if seed else v.clone() for k, v in _state().items()}
    net.load_state_dict(state, assign=True)
    return net


def linears(net):
    return [m for m in net.modules() if isinstance(m, Linear)]


def net_with_packed_weights(dtype=torch.float32):
    net = new_net().to(dtype).eval()
    output(net)
    assert all(is_packed(m) for m in linears(net))
    assert all(type(p) is nn.Parameter and p.layout == torch.strided for p in net.parameters())
    return net


def fresh_output(net, x=X):
    """What a newly built net holding ``net``'s current weights gives, without packing."""
    other = new_net().eval()
    set_packing(other, False)
    other.load_state_dict(net.state_dict())
    other = other.to(net.pos_embed.dtype)
    with torch.no_grad():
        return other.clip_embedding(x.to(other.pos_embed.dtype))


def output(net, x=X):
    with torch.no_grad():
        return net.clip_embedding(x.to(net.pos_embed.dtype))


def assert_serves_current_weights(net):
    out = output(net)
    tol = 1e-5 if out.dtype == torch.float32 else 2e-3  # packed and plain kernels round differently
    assert (out - fresh_output(net)).abs().max() <= tol
    return out


def test_layer_matches_f_linear_and_keeps_a_plain_weight():
    lin = Linear(64, 96)
    x = torch.randn(5, 64)
    held = lin.weight
    with torch.no_grad():
        y = lin(x, gelu=True)
        z = lin(x, residual=x[:, :1].expand(5, 96).contiguous())
    assert is_packed(lin) and lin.weight is held and type(held) is nn.Parameter and not held.is_mkldnn
    ref = F.linear(x, held.detach(), lin.bias.detach())
    assert (y - F.gelu(ref)).abs().max() <= 1e-5
    assert (z - (ref + x[:, :1])).abs().max() <= 1e-5


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),  # writes without bumping the version counter
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True),
    lambda ps: torch.optim.SGD(ps, lr=0.1, foreach=False),
], ids=["adamw-fused", "adamw-foreach", "sgd"])
def test_optimizer_step(make_opt):
    net = net_with_packed_weights().train()
    opt = make_opt(net.parameters())
    before = output(net)
    net.clip_embedding(X).square().mean().backward()
    opt.step()
    opt.zero_grad()
    net.eval()
    after = assert_serves_current_weights(net)
    assert all(is_packed(m) for m in linears(net))  # grads cleared: inference packs again
    assert (after - before).abs().max() > 1e-3  # the step changed what the net computes


def test_no_packing_while_gradients_are_pending():
    net = net_with_packed_weights().train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, fused=True)
    net.clip_embedding(X).square().mean().backward()
    output(net)  # an evaluation between backward and step
    assert not any(is_packed(m) for m in linears(net))
    before = output(net)
    opt.step()
    after = assert_serves_current_weights(net)
    assert (after - before).abs().max() > 1e-3


def test_frozen_weight_with_a_trainable_bias_gets_its_gradient():
    """Bias-only fine-tuning: a frozen weight must not send a call needing the bias's gradient to the packed path."""
    lin = Linear(16, 8)
    lin.weight.requires_grad_(False)
    x = torch.randn(4, 16)
    with torch.no_grad():
        lin(x)
    lin(x, gelu=True).sum().backward()
    b = lin.bias.detach().clone().requires_grad_()
    F.gelu(F.linear(x, lin.weight.detach(), b)).sum().backward()
    assert lin.bias.grad is not None and torch.allclose(lin.bias.grad, b.grad, atol=1e-6)


def test_load_state_dict_strict_assign_and_inside_inference_mode():
    net = net_with_packed_weights()
    net.load_state_dict(new_net(1).state_dict())
    assert_serves_current_weights(net)
    net.load_state_dict(new_net(2).state_dict(), assign=True)
    assert_serves_current_weights(net)
    with torch.inference_mode():  # built, used and loaded inside inference mode: inference-tensor weights
        inner = new_net(3).eval()
        inner.clip_embedding(X)
        inner.load_state_dict(new_net(4).state_dict())
        out = inner.clip_embedding(X)
    assert (out - fresh_output(inner)).abs().max() <= 1e-5


@pytest.mark.parametrize("held", [False, True])
def test_copy_and_data_assignment(held):
    net = net_with_packed_weights()
    lin = net.blocks[0].mlp.fc1
    w = lin.weight
    target = (lambda: w) if held else (lambda: lin.weight)
    with torch.no_grad():
        target().copy_(torch.randn(w.shape))
    assert_serves_current_weights(net)
    with torch.no_grad():
        target().mul_(-1.5)
    assert_serves_current_weights(net)
    target().data = torch.zeros(w.shape)  # a new storage
    out = assert_serves_current_weights(net)
    assert torch.count_nonzero(lin.weight) == 0 and torch.isfinite(out).all()


def test_to_dtype_and_back_and_to_empty_then_load():
    net = net_with_packed_weights()
    sd = copy.deepcopy(net.state_dict())
    net.to(torch.bfloat16)
    assert net.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert_serves_current_weights(net)
    net.to(torch.float32)  # values rounded to bfloat16: a stale float32 copy would differ
    assert_serves_current_weights(net)
    net.to_empty(device="cpu")
    net.load_state_dict(sd)
    assert_serves_current_weights(net)


def test_state_dict_parameters_and_copies_are_plain():
    net = net_with_packed_weights()
    assert all(type(p) is nn.Parameter and not p.is_mkldnn and not p.is_inference() for p in net.parameters())
    assert all(t.layout == torch.strided and not t.is_mkldnn for t in net.state_dict().values())
    assert vars(linears(net)[0]).keys() == vars(Linear(4, 4)).keys()  # no cache on the module itself
    twin = copy.deepcopy(net)
    assert not any(is_packed(m) for m in linears(twin))
    assert torch.equal(output(twin), output(net))


def test_set_packing_off_frees_the_copies():
    net = net_with_packed_weights()
    set_packing(net, False)
    assert not any(is_packed(m) for m in linears(net))
    out = output(net)
    assert not any(is_packed(m) for m in linears(net))
    assert torch.equal(out, fresh_output(net))


def test_float32_packing_follows_the_cpu_and_can_be_turned_off(monkeypatch):
    """Default: float32 packs except on Intel CPUs with MKL (whose sgemm beats oneDNN's packed float32
    kernel there); off, float32 runs plain ``F.linear`` (bit for bit ``set_packing(False)``) and
    bfloat16 still packs."""
    vendor = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("vendor_id")), "")
    assert packing._float32_packing_pays() == (not (torch.backends.mkl.is_available() and vendor == "GenuineIntel"))
    monkeypatch.setattr(Linear, "pack_float32", False)
    net = new_net().eval()
    out = output(net)
    assert not any(is_packed(m) for m in linears(net))
    plain = copy.deepcopy(net)
    set_packing(plain, False)
    assert torch.equal(out, output(plain))
    half = new_net().to(torch.bfloat16).eval()
    output(half)
    assert all(is_packed(m) for m in linears(half))


# ------------------------------------------------------------------ memory-mapped weights
def resident_pages(t):
    """How many of ``t``'s whole pages are in this process's memory now (``/proc/self/pagemap`` bit 63)."""
    page = mmap.PAGESIZE
    start, end = -(-t.data_ptr() // page), (t.data_ptr() + t.numel() * t.element_size()) // page
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        data = os.pread(fd, 8 * (end - start), 8 * start)
    finally:
        os.close(fd)
    return sum(e >> 63 for e in struct.unpack(f"{end - start}Q", data))


@pytest.mark.skipif(not os.path.exists("/proc/self/pagemap"), reason="needs Linux's /proc/self/pagemap")
def test_mapped_weights_leave_memory_once_packed_and_stay_exact(tmp_path):
    """Loaded as the zoo loads (memory-mapped file), the plain weights' pages are handed back after packing;
    reading the weights afterwards gives the file's values; a weight written since loading stays in memory."""
    sd = new_net(1).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    with torch.device("meta"):
        net = zoo.PEViT(CFG)
    net.load_state_dict(read_tensors(tmp_path / "w.safetensors"), assign=True)
    net.eval().requires_grad_(False)
    written = net.blocks[1].mlp.fc2.weight
    with torch.no_grad():
        written[96, 0] = 1.0  # one page copied on write: no longer the file's
    assert sum(resident_pages(m.weight) for m in linears(net) if m.weight is not written) == 0  # not read yet
    out = output(net)
    assert resident_pages(net.blocks[0].mlp.fc1.weight) == 0  # read to pack, then handed back
    assert resident_pages(written) > 0
    for k, v in net.state_dict().items():  # the pages come back from the file, unchanged
        want = sd[k].clone()
        if k == "blocks.1.mlp.fc2.weight":
            want[96, 0] = 1.0
        assert torch.equal(v, want), k
    assert (out - fresh_output(net)).abs().max() <= 1e-5
