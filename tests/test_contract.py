"""The PyTorch contract: a zoo net behaves as a plain ``nn.Module`` whatever it went through before.

A Hypothesis state machine drives random sequences of what users do to a module (modes, gradient
switches, forwards under grad / no_grad / inference_mode / autocast, backward, optimizer steps, state
dicts, copies, pickling, dtype moves, tracing, checkpointing, freezing, new heads, packing switches,
``swap_tensors``, DataParallel, DDP on gloo; compile and export under ``-m slow``) on two T16 nets at
depth 2: the zoo net as users get it, and a reference holding the same weights that never keeps
anything between calls (packing off, RoPE tables dropped before every call; ``test_grads_vs_timm.py``
ties that plain path to timm). Every output, gradient and state dict must agree, and an operation
must raise on one exactly when it raises on the other. The plain tests below are the sequences the
machine (or the issue) found failing on the wave-2 code.
"""

import copy
import dataclasses
import functools
import io
import os
import warnings

import pytest
import torch
import torch.distributed as dist
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from torch import nn

import zoo
from zoo.nets.pe_vit import Linear, set_packing
from zoo.registry import get_entry

CONFIGS = {
    "core": dataclasses.replace(get_entry("rope_i_vit_t16_pn_aps_c1_pe-core").config, depth=2),
    "spatial": dataclasses.replace(get_entry("rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial").config, depth=2),
}
SIZES = [(32, 32), (48, 64)]
SLOW = {"on": False}  # compile and export rules: -m slow only (seconds each)


@functools.cache
def _state(kind: str) -> dict[str, torch.Tensor]:
    net = zoo.PEViT(CONFIGS[kind])
    if kind == "core":
        net.reset_classifier(5)  # Core with a head
    return net.state_dict()


def build(kind: str, seed: int = 0) -> zoo.PEViT:
    """A net of ``kind`` with random weights (``init_weights`` paid once per kind); ``seed`` perturbs them."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        net = zoo.PEViT(CONFIGS[kind])
        if kind == "core":
            net.reset_classifier(5)
    net.load_state_dict({k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in _state(kind).items()}, assign=True)
    return net


def image(seed: int, size=(32, 32), batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def tolerance(t: torch.Tensor) -> float:
    return 1e-4 if t.dtype == torch.float32 else 6e-2


def assert_close(a, b, what: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_close(a[k], b[k], f"{what}[{k}]")
        return
    assert a.shape == b.shape and a.dtype == b.dtype, what
    tol = tolerance(b)
    a, b = a.detach().float(), b.detach().float()
    assert torch.equal(a.isnan(), b.isnan()), f"{what}: NaN in one only"  # both diverged alike is agreement
    a, b = a.nan_to_num(0.0), b.nan_to_num(0.0)
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= tol * scale, f"{what}: max |zoo - reference| = {err:g}"


def assert_plain(net: nn.Module) -> None:
    """What users see of the weights: nn.Parameter over a plain strided tensor, nothing packed or hidden."""
    for name, p in net.named_parameters():
        assert type(p) is nn.Parameter and p.layout == torch.strided and not p.is_mkldnn, name
        assert not p.is_inference(), name
    for name, t in net.state_dict().items():
        assert t.layout == torch.strided and not t.is_mkldnn and not t.is_inference(), name


@pytest.fixture(scope="module", autouse=True)
def gloo():
    """A one-process gloo group, for DDP on the CPU."""
    if not dist.is_available():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class Contract(RuleBasedStateMachine):
    """The zoo net (``net``) against a reference with the same weights that keeps nothing between calls (``ref``)."""

    @initialize(kind=st.sampled_from(sorted(CONFIGS)), seed=st.integers(0, 3))
    def setup(self, kind, seed):
        self.float32_default = Linear.pack_float32
        Linear.pack_float32 = True  # the packed path on any CPU
        self.kind = kind
        self.net = build(kind, seed)
        self.ref = build(kind, seed)
        set_packing(self.ref, False)
        self.traced = False

    def teardown(self):
        if hasattr(self, "float32_default"):
            Linear.pack_float32 = self.float32_default

    # ------------------------------------------------------------ helpers
    def both(self, op, what: str):
        """Run ``op(net)`` and ``op(ref)``: both raise the same exception type, or both return (results given back)."""
        results, errors = [], []
        for model in (self.net, self.ref):
            if model is self.ref:
                model._rope_cache.clear()  # the reference never keeps tables between calls
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    results.append(op(model))
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - compared below
                results.append(None)
                errors.append(e)
        kinds = [type(e) if e is not None else None for e in errors]
        assert kinds[0] == kinds[1], f"{what}: zoo net {errors[0]!r} but reference {errors[1]!r}"
        return results if errors[0] is None else None

    # ------------------------------------------------------------ rules
    @rule(mode=st.booleans())
    def train_or_eval(self, mode):
        self.both(lambda m: m.train(mode), "train()")

    @rule(flag=st.booleans())
    def requires_grad(self, flag):
        self.both(lambda m: m.requires_grad_(flag), "requires_grad_")

    @rule(blocks=st.sampled_from([None, 0, 1, 2]))
    def freeze(self, blocks):
        self.both(lambda m: m.freeze(blocks), "freeze")

    @rule(flag=st.booleans())
    def grad_checkpointing(self, flag):
        self.both(lambda m: m.set_grad_checkpointing(flag), "set_grad_checkpointing")

    @rule(flag=st.booleans())
    def packing(self, flag):
        set_packing(self.net, flag)  # the reference stays plain

    @rule(
        grad=st.sampled_from(["grad", "no_grad", "inference_mode"]),
        method=st.sampled_from(["forward", "forward_features", "detection_features"]),
        size=st.sampled_from(SIZES),
        autocast=st.booleans(),
        seed=st.integers(0, 9),
    )
    def forward(self, grad, method, size, autocast, seed):
        x = image(seed, size)
        ctx = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[grad]

        def run(m):
            with ctx(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                if method == "detection_features":
                    return m.detection_features(x, layers=[0, -1])
                return getattr(m, method)(x)

        out = self.both(run, f"{method} under {grad}")
        if out is not None:
            assert_close(out[0], out[1], f"{method} under {grad}, autocast={autocast}")

    @rule(input_grad=st.booleans(), size=st.sampled_from(SIZES), seed=st.integers(0, 9))
    def backward(self, input_grad, size, seed):
        xs = [image(seed, size).requires_grad_(input_grad) for _ in range(2)]
        models = iter(xs)

        def run(m):
            x = next(models)
            m(x).float().square().mean().backward()
            return x.grad

        out = self.both(run, "backward")
        if out is not None:
            if input_grad:
                assert_close(out[0], out[1], "input gradient")
            self.compare_grads()

    def compare_grads(self):
        ref = dict(self.ref.named_parameters())
        for name, p in self.net.named_parameters():
            assert (p.grad is None) == (ref[name].grad is None), name
            if p.grad is not None:
                assert_close(p.grad, ref[name].grad, f"grad of {name}")

    @rule(kind=st.sampled_from(["sgd", "adamw-fused", "adamw-foreach"]))
    def optimizer_step(self, kind):
        def run(m):
            params = [p for p in m.parameters() if p.requires_grad]
            if kind == "sgd":
                opt = torch.optim.SGD(params, lr=0.05)
            else:
                opt = torch.optim.AdamW(params, lr=1e-3, fused=kind.endswith("fused"), foreach=kind.endswith("foreach") or None)
            opt.step()

        self.both(run, f"{kind} step")

    @rule(set_to_none=st.booleans())
    def zero_grad(self, set_to_none):
        self.both(lambda m: m.zero_grad(set_to_none=set_to_none), "zero_grad")

    @rule(assign=st.booleans(), seed=st.integers(1, 9))
    def load_state_dict(self, assign, seed):
        def run(m):
            own = m.state_dict()  # a reset head keeps its own tensors
            new = {k: v.to(m.pos_embed.dtype) for k, v in build(self.kind, seed).state_dict().items() if k in own and v.shape == own[k].shape}
            return m.load_state_dict(own | new, strict=True, assign=assign)

        self.both(run, "load_state_dict")

    @rule()
    def deepcopy(self):
        self.net, self.ref = copy.deepcopy(self.net), copy.deepcopy(self.ref)

    @rule()
    def pickle(self):
        def reload(m):
            buf = io.BytesIO()
            torch.save(m, buf)
            buf.seek(0)
            return torch.load(buf, weights_only=False)

        self.net, self.ref = self.both(reload, "torch.save / torch.load")

    @rule(dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    def to_dtype(self, dtype):
        self.both(lambda m: m.to(dtype), f".to({dtype})")

    @precondition(lambda self: SLOW["on"] or not self.traced)  # a trace costs about a second: one per sequence
    @rule(seed=st.integers(0, 9))
    def jit_trace(self, seed):
        self.traced = True
        x = image(seed)
        traced = self.both(lambda m: torch.jit.trace(m, x, check_trace=False), "torch.jit.trace")
        if traced is not None:
            with torch.no_grad():
                assert_close(traced[0](x), traced[1](x), "traced net")

    @rule(num_classes=st.sampled_from([0, 3]))
    def reset_classifier(self, num_classes):
        self.net.reset_classifier(num_classes)
        self.ref.reset_classifier(num_classes)
        self.ref.head.load_state_dict(self.net.head.state_dict())

    @rule(which=st.sampled_from(["blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "pos_embed"]), seed=st.integers(0, 9))
    def swap_tensors(self, which, seed):
        def run(m):
            p = m.get_parameter(which)
            new = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)).to(p.dtype) * 0.02
            torch.utils.swap_tensors(p, nn.Parameter(new, requires_grad=p.requires_grad))

        self.both(run, "swap_tensors")

    @rule(seed=st.integers(0, 9))
    def data_parallel(self, seed):
        x = image(seed)
        out = self.both(lambda m: nn.DataParallel(m)(x), "DataParallel")
        if out is not None:
            assert_close(out[0], out[1], "DataParallel output")

    @precondition(lambda self: dist.is_available() and dist.is_initialized())
    @rule(seed=st.integers(0, 9))
    def ddp_backward(self, seed):
        x = image(seed)

        def run(m):
            ddp = nn.parallel.DistributedDataParallel(m, find_unused_parameters=True)
            ddp(x).float().square().mean().backward()

        if self.both(run, "DDP backward") is not None:
            self.compare_grads()

    @precondition(lambda self: SLOW["on"])
    @rule(seed=st.integers(0, 9))
    def compile(self, seed):
        x = image(seed)
        out = self.both(lambda m: torch.compile(m, dynamic=False)(x), "torch.compile")
        if out is not None:
            assert_close(out[0], out[1], "compiled net")

    @precondition(lambda self: SLOW["on"])
    @rule(seed=st.integers(0, 9))
    def export(self, seed):
        x = image(seed)
        out = self.both(lambda m: torch.export.export(m, (x,)).module()(x), "torch.export")
        if out is not None:
            assert_close(out[0], out[1], "exported net")

    # ------------------------------------------------------------ what must always hold
    @invariant()
    def same_visible_state(self):
        if not hasattr(self, "net"):
            return
        assert_plain(self.net)
        assert self.net.training == self.ref.training
        assert [p.requires_grad for p in self.net.parameters()] == [p.requires_grad for p in self.ref.parameters()]
        assert_close(self.net.state_dict(), self.ref.state_dict(), "state_dict")


def run_contract(examples: int, steps: int) -> None:
    run_state_machine_as_test(Contract, settings=settings(
        max_examples=examples, stateful_step_count=steps, derandomize=True, database=None, deadline=None,
        suppress_health_check=list(HealthCheck), print_blob=True,
    ))


def test_contract_state_machine():
    """A bounded, seeded run in the default suite."""
    run_contract(int(os.environ.get("ZOO_CONTRACT_EXAMPLES", "14")), 15)


@pytest.mark.slow
def test_contract_state_machine_long():
    """Many more sequences, with torch.compile and torch.export among the operations."""
    SLOW["on"] = True
    try:
        run_contract(200, 30)
    finally:
        SLOW["on"] = False


# ------------------------------------------------------------------ what the machine (or the issue) found
pytestmark_packing = pytest.mark.usefixtures("float32_packing")


def reference(net: zoo.PEViT) -> zoo.PEViT:
    """A net holding ``net``'s weights that never ran, with packing off."""
    ref = copy.deepcopy(net)
    ref._rope_cache.clear()
    set_packing(ref, False)
    return ref


@pytestmark_packing
def test_inference_mode_forward_then_training_step():
    net = build("core").eval()
    ref = reference(net)
    with torch.inference_mode():
        net(image(0))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    for m, o in ((net, opt), (ref, ref_opt)):
        m.train()
        m(image(1)).square().mean().backward()  # failed: "Inference tensors cannot be saved for backward"
        o.step()
    assert_close(net.state_dict(), ref.state_dict(), "after the step")
    with torch.no_grad():
        assert_close(net.eval()(image(2)), ref.eval()(image(2)), "output after the step")


@pytestmark_packing
@pytest.mark.parametrize("kind", ["core", "spatial"])
def test_inference_mode_forward_then_input_gradients(kind):
    """Saliency / GradCAM after an evaluation under inference_mode (birder's FeaturePCA then GradCAM)."""
    net = build(kind).eval().requires_grad_(False)
    with torch.inference_mode():
        net.forward_features(image(0))
    grads = []
    for m in (net, reference(net)):
        x = image(1).requires_grad_()
        m.forward_features(x).square().sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0
    assert_close(grads[0], grads[1], "input gradient")


@pytestmark_packing
def test_birder_sequence_then_jit_trace():
    """birder's test_net order: eval, inference_mode forward, train, forward, eval, then torch.jit.trace."""
    net = build("core")
    net.eval()
    with torch.inference_mode():
        net.forward_features(image(0))
    net.train()
    net.forward_features(image(1))
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, image(2), check_trace=False)  # failed: "Mkldnn tensor does not support view"
    with torch.no_grad():
        assert_close(traced(image(3)), reference(net)(image(3)), "traced net")


@pytestmark_packing
def test_jit_trace_after_one_cpu_inference():
    net = build("spatial").eval()
    with torch.no_grad():
        want = net(image(0))
    with warnings.catch_warnings(), torch.no_grad():  # no gradients: where packing would run
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, image(0), check_trace=False)
    with torch.no_grad():
        assert_close(traced(image(0)), want, "traced net")
        net.blocks[0].mlp.fc1.weight.mul_(3.0)  # a trace shares the module's parameters: it must follow them
        assert_close(traced(image(1)), reference(net)(image(1)), "traced net after a weight change")


@pytestmark_packing
@pytest.mark.parametrize("swap_on_conversion", [False, True])
def test_swap_tensors_on_a_packed_parameter(swap_on_conversion):
    net = build("core").eval()
    with torch.no_grad():
        net(image(0))
    w = net.blocks[0].attn.qkv.weight
    new = torch.randn(w.shape, generator=torch.Generator().manual_seed(1)) * 0.02
    torch.utils.swap_tensors(w, nn.Parameter(new.clone()))  # failed: refused to unpack a packed parameter
    assert torch.equal(net.blocks[0].attn.qkv.weight, new) and net.blocks[0].attn.qkv.weight is w
    default = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(swap_on_conversion)
    try:
        net.to(torch.bfloat16)  # through swap_tensors when the flag is on
    finally:
        torch.__future__.set_swap_module_params_on_conversion(default)
    with torch.no_grad():
        assert_close(net(image(2)), reference(net)(image(2)), "after the swaps")


@pytestmark_packing
def test_checkpointing_autocast_training_and_ddp_after_inference():
    net = build("core").eval()
    with torch.no_grad():
        net(image(0))
    ref = reference(net)
    for m in (net, ref):
        m.train().set_grad_checkpointing()
        with torch.autocast("cpu", torch.bfloat16):
            m(image(1)).float().square().mean().backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        if p.grad is not None:
            assert_close(p.grad, q.grad, name)
    net.zero_grad()
    if dist.is_available() and dist.is_initialized():
        ddp = nn.parallel.DistributedDataParallel(net.eval(), find_unused_parameters=True)
        with torch.no_grad():
            ddp(image(2))  # packs
        ddp.train()
        ddp(image(3)).square().mean().backward()
        assert all(p.grad is not None for n, p in net.named_parameters() if not n.startswith("clip_proj"))


@pytestmark_packing
@pytest.mark.slow
def test_export_after_inference():
    net = build("spatial").eval()
    with torch.no_grad():
        want = net(image(0))
        ep = torch.export.export(net, (image(0),))
    assert_close(ep.module()(image(0)), want, "exported net")
    assert_plain(net)


@pytestmark_packing
@pytest.mark.slow
def test_compile_after_inference():
    net = build("core").eval()
    with torch.no_grad():
        want = net(image(0))
        got = torch.compile(net)(image(0))
    assert_close(got, want, "compiled net")
