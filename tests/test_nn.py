"""fastconv.nn: the drop-in Conv2d (vs torch.nn.Conv2d), its packed-weight cache, and the
efficient-convolution blocks (vs plain F.conv2d compositions with the same weights)."""
import copy
import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import fastconv
from fastconv import registry
from fastconv.nn import blocks as B

F64 = dict(atol=1e-10, rtol=1e-10)
F32 = dict(atol=2e-5, rtol=2e-5)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny shapes: OpenMP threads only add contention on the shared 2-core CI machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pair(fast_kwargs, dtype, seed=0):
    """A fastconv.nn.Conv2d and an nn.Conv2d with identical state."""
    torch.manual_seed(seed)
    ref = nn.Conv2d(**fast_kwargs).to(dtype)
    fast = fastconv.nn.Conv2d(**fast_kwargs).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return fast, ref


def grads(module, x, out_grad):
    module.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    y.backward(out_grad)
    return y, [x.grad] + [p.grad.clone() for p in module.parameters()]


def assert_close_all(a, b, tol):
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, **tol)


GEOMETRY = [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, padding=1, groups=2),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 1)),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=2, padding="same"),  # asymmetric 'same'
    dict(kernel_size=3, padding="valid", groups=4),  # depthwise
    dict(kernel_size=1, stride=1, padding=0),
]


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("geom", range(len(GEOMETRY)))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, F64), (torch.float32, F32)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_matches_nn(padding_mode, geom, dtype, tol, bias):
    kw = dict(in_channels=4, out_channels=8, bias=bias, padding_mode=padding_mode, **GEOMETRY[geom])
    fast, ref = pair(kw, dtype)
    x = torch.randn(2, 4, 7, 6, dtype=dtype)
    y_ref = ref(x)
    g = torch.randn_like(y_ref)
    for train in (True, False):
        fast.train(train)
        ref.train(train)
        assert_close_all(grads(fast, x, g)[1], grads(ref, x, g)[1], tol)
        torch.testing.assert_close(fast(x), ref(x), **tol)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_conv2d_channels_last_and_unbatched(padding_mode):
    kw = dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, padding_mode=padding_mode)
    fast, ref = pair(kw, torch.float64)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    xcl = x.contiguous(memory_format=torch.channels_last)
    y = fast(xcl)
    torch.testing.assert_close(y, ref(xcl), **F64)
    assert y.is_contiguous(memory_format=torch.channels_last) == \
        ref(xcl).is_contiguous(memory_format=torch.channels_last)
    fast_cl = copy.deepcopy(fast).to(memory_format=torch.channels_last)
    torch.testing.assert_close(fast_cl(x), ref(x), **F64)
    torch.testing.assert_close(fast(x[0]), ref(x[0]), **F64)  # unbatched


def test_state_dict_round_trip_both_ways():
    kw = dict(in_channels=3, out_channels=6, kernel_size=3, padding=1, groups=3)
    ref = nn.Conv2d(**kw)
    fast = fastconv.nn.Conv2d(**kw, algo="im2col", activation="relu")
    assert list(fast.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    fast.load_state_dict(ref.state_dict())
    back = nn.Conv2d(**kw)
    back.load_state_dict(fast.state_dict())
    torch.testing.assert_close(back.weight, ref.weight)
    assert isinstance(fast, nn.Conv2d)
    assert "algo='im2col'" in repr(fast) and "activation='relu'" in repr(fast)


@pytest.mark.parametrize("activation", ["relu", "relu6", "silu", "gelu"])
def test_fused_activation_matches_module(activation):
    act = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "gelu": F.gelu}[activation]
    kw = dict(in_channels=3, out_channels=5, kernel_size=3, padding=1)
    torch.manual_seed(0)
    ref = nn.Conv2d(**kw).double()
    fast = fastconv.nn.Conv2d(**kw, activation=activation).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64) * 4
    g = torch.randn(2, 5, 5, 5, dtype=torch.float64)
    ref_seq = nn.Sequential(ref)
    ref_seq.forward = lambda t: act(ref(t))
    assert_close_all(grads(fast, x, g)[1], grads(ref_seq, x, g)[1], F64)


@pytest.mark.parametrize("algo", [a.name for a in fastconv.algorithms() if "cpu" in a.devices])
def test_explicit_algorithms(algo):
    kw = dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4)
    fast, ref = pair(kw, torch.float64)
    fast.algo = algo
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(fast(x), ref(x), **F64)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown algo"):
        fastconv.nn.Conv2d(3, 4, 3, algo="nope")
    with pytest.raises(TypeError, match="algo must be a string"):
        fastconv.nn.Conv2d(3, 4, 3, algo=None)
    with pytest.raises(ValueError, match="unknown activation"):
        fastconv.nn.Conv2d(3, 4, 3, activation="tanh")
    with pytest.raises(ValueError, match="padding_mode"):
        fastconv.nn.Conv2d(3, 4, 3, padding_mode="mirror")
    m = fastconv.nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="channels"):
        m(torch.randn(1, 5, 6, 6))
    # TypeError from fastconv.conv2d; under TRITON_INTERPRET=1 (bf16 allowed on the CPU for
    # Triton) the C++ kernel's check says it.
    with pytest.raises((TypeError, RuntimeError), match="(?i)dtype|bfloat16"):
        m.to(torch.bfloat16)(torch.randn(1, 3, 6, 6, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="algo='depthwise'"):
        fastconv.nn.Conv2d(3, 4, 3, algo="depthwise")(torch.randn(1, 3, 6, 6))


# ---------------------------------------------------------------------------------------
# packed-weight cache
# ---------------------------------------------------------------------------------------

class PackSpy:
    """Wraps an algorithm's pack function and counts calls."""

    def __init__(self, pack):
        self.pack, self.calls = pack, 0

    def __call__(self, weight, groups):
        self.calls += 1
        return self.pack(weight, groups)


def _fake_pack(weight, groups):
    # A real transformation (flipped, channels-last copy), so using it unpacked would be wrong.
    return weight.flip(-1).permute(0, 2, 3, 1).contiguous()


def _fake_forward_packed(x, packed, weight_size, bias, stride, padding, dilation, groups, act):
    w = packed.permute(0, 3, 1, 2).flip(-1)
    assert list(w.shape) == list(weight_size)
    return torch.ops.fastconv.reference_conv2d(x, w, bias, stride, padding, dilation, groups, act)


def _packed_algorithms():
    out = ["fake"]
    direct = registry.get("direct")
    out.append(pytest.param("direct", marks=pytest.mark.skipif(
        direct.packing is None, reason="torch.ops.fastconv.direct_pack_weight not built yet")))
    return out


@pytest.fixture(params=_packed_algorithms())
def packed_algo(request, monkeypatch):
    """(algo name, pack spy): a registered algorithm with a packed path, its pack counted."""
    if request.param == "fake":
        name, spy = "_test_packed", PackSpy(_fake_pack)
        registry.register(registry.Algorithm(
            name=name, op="reference", devices=("cpu",), dtypes=(torch.float32, torch.float64),
            summary="test-only: reference conv on a flipped channels-last weight", public=False,
            constraints="any conv2d", pack_weight=spy, forward_packed=_fake_forward_packed))
        yield name, spy
        registry.unregister(name)
    else:  # the real op: same checks, its pack function counted
        alg = registry.get("direct")
        pack, forward_packed = alg.packing
        spy = PackSpy(pack)
        registry.register(dataclasses.replace(alg, pack_weight=spy,
                                              forward_packed=forward_packed), replace=True)
        try:
            yield "direct", spy
        finally:
            registry.register(alg, replace=True)


def test_packed_cache_reused_and_invalidated(packed_algo):
    algo, spy = packed_algo
    torch.manual_seed(0)
    kw = dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, stride=2)
    fast = fastconv.nn.Conv2d(**kw, algo=algo, activation="relu").double()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)

    def expected():
        return F.relu(F.conv2d(x, fast.weight, fast.bias, fast.stride, fast.padding))

    fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), expected(), **F64)
        torch.testing.assert_close(fast(x), expected(), **F64)
    assert spy.calls == 1 and fast.packed_weight_cached

    # Training goes through the regular op (autograd), never the packer.
    fast.train()
    opt = torch.optim.SGD(fast.parameters(), lr=0.5)
    fast(x).square().sum().backward()
    assert spy.calls == 1
    opt.step()  # in-place update bumps the weight's version
    fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), expected(), **F64)
    assert spy.calls == 2

    # Parameters that need no grad use the packed path even with grad mode on.
    frozen = copy.deepcopy(fast).requires_grad_(False)
    torch.testing.assert_close(frozen(x), expected(), **F64)

    # load_state_dict copies in place.
    other = fastconv.nn.Conv2d(**kw).double()
    fast.load_state_dict(other.state_dict())
    assert not fast.packed_weight_cached
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), expected(), **F64)
    assert spy.calls == 4  # frozen copy packed once, then this one

    # .to() swaps the data.
    fast.float()
    x = x.float()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), expected(), **F32)
    assert spy.calls == 5

    # In-place edit under no_grad (e.g. a manual weight update), and parameter reassignment.
    with torch.no_grad():
        fast.weight.mul_(-1)
        torch.testing.assert_close(fast(x), expected(), **F32)
        fast.weight = nn.Parameter(torch.randn_like(fast.weight))
        torch.testing.assert_close(fast(x), expected(), **F32)
    assert spy.calls == 7

    # The cache is never saved: pickling drops it, and the copy repacks.
    buf = io.BytesIO()
    torch.save(fast, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert not loaded.packed_weight_cached
    clone = copy.deepcopy(fast)
    assert not clone.packed_weight_cached
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected(), **F32)
        torch.testing.assert_close(clone(x), expected(), **F32)
    assert "_packed" not in "".join(fast.state_dict())


def test_no_packed_path_without_packing():
    m = fastconv.nn.Conv2d(3, 4, 3, algo="im2col").eval()
    with torch.no_grad():
        m(torch.randn(1, 3, 5, 5))
    assert not m.packed_weight_cached


# ---------------------------------------------------------------------------------------
# blocks: each equals its plain F composition (same weights), float64, outputs and grads
# ---------------------------------------------------------------------------------------

def conv(m, x):
    """F.conv2d with a module's own weights and geometry (zeros padding mode)."""
    return F.conv2d(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


def bn(m, x):
    return m(x)  # the norm module itself: the block's structure is what is under test


def ref_depthwise_separable(b, x):
    d, p = b.depthwise, b.pointwise
    y = F.relu(bn(d[1], conv(d[0], x)))
    return F.relu(bn(p[1], conv(p[0], y)))


def ref_bottleneck(b, x):
    y = F.relu(bn(b.bn1, conv(b.conv1, x)))
    y = F.relu(bn(b.bn2, conv(b.conv2, y)))
    y = bn(b.bn3, conv(b.conv3, y))
    idt = x if b.downsample is None else bn(b.downsample[1], conv(b.downsample[0], x))
    return F.relu(y + idt)


def ref_grouped(b, x):
    y = conv(b[0], x)
    n, c, h, w = y.shape
    return y.view(n, b.groups, c // b.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def ref_inverted_residual(b, x):
    seq = list(b.conv)
    y = x
    if len(seq) == 4:
        y = F.relu6(bn(seq[0][1], conv(seq[0][0], y)))
        seq = seq[1:]
    y = F.relu6(bn(seq[0][1], conv(seq[0][0], y)))
    y = bn(seq[2], conv(seq[1], y))
    return x + y if b.use_res_connect else y


def ref_se(b, x):
    s = x.mean((2, 3), keepdim=True)
    return x * torch.sigmoid(conv(b.fc2, F.relu(conv(b.fc1, s))))


def ref_factorized(b, x):
    return conv(b.horizontal[0], conv(b.vertical[0], x))


def ref_efficient(b, x):
    blk = b.block
    y = F.silu(bn(blk.expand[1], conv(blk.expand[0], x)))
    y = F.silu(bn(blk.depthwise[1], conv(blk.depthwise[0], y)))
    se = blk.se
    y = y * torch.sigmoid(conv(se.fc2, F.silu(conv(se.fc1, y.mean((2, 3), keepdim=True)))))
    y = bn(blk.project[1], conv(blk.project[0], y))
    return x + y if b.use_res_connect else y


def params_bn(c):
    return 2 * c


# (name, factory, reference, input shape, parameter-count formula)
BLOCKS = [
    ("depthwise", lambda: B.DepthwiseConv2d(6, 3, stride=2, channel_multiplier=2),
     conv, (2, 6, 7, 7), 6 * 2 * 9),
    ("depthwise_dilated", lambda: B.DepthwiseConv2d(4, 5, dilation=2, bias=True),
     conv, (2, 4, 9, 9), 4 * 25 + 4),
    ("depthwise_rect", lambda: B.DepthwiseConv2d(4, (3, 5), dilation=(2, 1)),
     conv, (1, 4, 7, 8), 4 * 15),
    ("pointwise", lambda: B.PointwiseConv2d(6, 10, stride=2, groups=2),
     conv, (2, 6, 5, 5), 10 * 3),
    ("dilated", lambda: B.DilatedConv2d(4, 6, 3, dilation=3), conv, (2, 4, 9, 8), 6 * 4 * 9 + 6),
    ("depthwise_separable",
     lambda: B.DepthwiseSeparableConv2d(4, 8, 3, stride=2, norm_layer=nn.BatchNorm2d,
                                        activation_layer=nn.ReLU),
     ref_depthwise_separable, (2, 4, 7, 7), 4 * 9 + 8 * 4 + params_bn(4) + params_bn(8)),
    ("bottleneck", lambda: B.Bottleneck(8, 4), ref_bottleneck, (2, 8, 6, 6),
     8 * 4 + 4 * 4 * 9 + 4 * 16 + 8 * 16 + 2 * (4 + 4 + 16 + 16)),
    ("bottleneck_down", lambda: B.Bottleneck(16, 4, 16, stride=2, groups=2), ref_bottleneck,
     (2, 16, 6, 6), 16 * 4 + 4 * 2 * 9 + 4 * 16 + 16 * 16 + 2 * (4 + 4 + 16 + 16)),
    ("bottleneck_identity", lambda: B.Bottleneck(16, 4), ref_bottleneck, (1, 16, 5, 5),
     16 * 4 + 4 * 4 * 9 + 4 * 16 + 2 * (4 + 4 + 16)),
    ("grouped_shuffle", lambda: B.GroupedConv2d(6, 12, 3, stride=1, groups=3), ref_grouped,
     (2, 6, 5, 5), 12 * 2 * 9 + 12),
    ("inverted_residual", lambda: B.InvertedResidual(8, 8, 1, expand_ratio=3),
     ref_inverted_residual, (2, 8, 6, 6), 8 * 24 + 24 * 9 + 24 * 8 + 2 * (24 + 24 + 8)),
    ("inverted_residual_s2", lambda: B.InvertedResidual(8, 12, 2, expand_ratio=1),
     ref_inverted_residual, (2, 8, 7, 7), 8 * 9 + 8 * 12 + 2 * (8 + 12)),
    ("squeeze_excitation", lambda: B.SqueezeExcitation(8, reduction=4), ref_se, (2, 8, 5, 5),
     2 * 8 * 2 + 2 + 8),
    ("factorized", lambda: B.FactorizedConv2d(4, 6, 5, stride=2, mid_channels=3), ref_factorized,
     (2, 4, 9, 8), 4 * 3 * 5 + 3 + 3 * 6 * 5 + 6),
    ("efficient", lambda: B.EfficientConvBlock(8, 8, 3, 1, expand_ratio=4), ref_efficient,
     (2, 8, 6, 6), 8 * 32 + 32 * 9 + (2 * 32 * 2 + 2 + 32) + 32 * 8 + 2 * (32 + 32 + 8)),
    ("efficient_s2", lambda: B.EfficientConvBlock(4, 8, 5, 2, expand_ratio=2, se_ratio=0.5),
     ref_efficient, (2, 4, 9, 9), 4 * 8 + 8 * 25 + (2 * 8 * 2 + 2 + 8) + 8 * 8 + 2 * (8 + 8 + 8)),
]


@pytest.mark.parametrize("name,factory,reference,shape,n_params", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_block_matches_composition(name, factory, reference, shape, n_params):
    torch.manual_seed(0)
    block = factory().double()
    assert sum(p.numel() for p in block.parameters()) == n_params
    x = torch.randn(*shape, dtype=torch.float64)
    for train in (True, False):
        block.train(train)
        xa = x.clone().requires_grad_(True)
        out = block(xa)
        g = torch.randn_like(out)
        gs = torch.autograd.grad(out, [xa, *block.parameters()], g)
        xb = x.clone().requires_grad_(True)
        ref = reference(block, xb)
        gr = torch.autograd.grad(ref, [xb, *block.parameters()], g)
        torch.testing.assert_close(out, ref, **F64)
        assert_close_all(gs, gr, F64)
    assert tuple(out.shape) == tuple(block.output_shape(shape))


@pytest.mark.parametrize("name,factory,reference,shape,n_params", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_block_flops_match_flop_counter(name, factory, reference, shape, n_params):
    block = factory().double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    with FlopCounterMode(display=False) as fast_count:
        block(x)
    # The same block on torch's own convs counts the same.
    plain = fastconv.revert(block)
    assert not any(isinstance(m, fastconv.nn.Conv2d) for m in plain.modules())
    with FlopCounterMode(display=False) as torch_count:
        plain(x)
    assert block.flops(shape) == fast_count.get_total_flops() == torch_count.get_total_flops() > 0


def test_block_flop_formulas():
    n, c, h, w = 2, 8, 6, 6
    e = 32
    blk = B.EfficientConvBlock(8, 8, 3, 1, expand_ratio=4)
    s = 2
    assert blk.flops((n, c, h, w)) == 2 * n * h * w * c * e + 2 * n * h * w * e * 9 + 4 * n * e * s \
        + 2 * n * h * w * e * 8
    dsc = B.DepthwiseSeparableConv2d(8, 16, 3)
    assert dsc.flops((n, c, h, w)) == 2 * n * c * h * w * 9 + 2 * n * 16 * h * w * c
    fac = B.FactorizedConv2d(8, 8, 3)
    assert fac.flops((n, c, h, w)) == 2 * (2 * n * 8 * h * w * c * 3)
    assert B.ChannelShuffle(2).flops((n, c, h, w)) == 0


def test_channel_shuffle_matches_torch():
    x = torch.randn(2, 12, 3, 4)
    for g in (1, 2, 3, 4, 6):
        torch.testing.assert_close(B.ChannelShuffle(g)(x), nn.ChannelShuffle(g)(x))
        torch.testing.assert_close(B.ChannelShuffle(g)(x[0]), nn.ChannelShuffle(g)(x[:1])[0])
    with pytest.raises(ValueError, match="does not divide"):
        B.ChannelShuffle(5)(x)


def test_block_algo_knob_reaches_every_conv():
    blk = B.EfficientConvBlock(4, 4, algo="im2col")
    convs = [m for m in blk.modules() if isinstance(m, fastconv.nn.Conv2d)]
    assert len(convs) == 5 and all(m.algo == "im2col" for m in convs)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(blk.double()(x), fastconv.revert(blk)(x), **F64)


def test_autocast_cpu_runs_in_float32_and_returns_bfloat16():
    # CPU autocast asks for bfloat16, which the CPU kernels lack: fastconv computes in fp32
    # and returns bfloat16 like F.conv2d (fastconv/_autocast.py); mixed-dtype inputs (a bf16
    # activation from an autocast layer) still work.
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    fast = fastconv.convert(ref)
    x = torch.randn(2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref = ref(x)
        y = fast(x)
        y_mixed = fast[1](fast[0](x).to(torch.bfloat16))
    assert y.dtype == y_ref.dtype == y_mixed.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), atol=0.05, rtol=0.05)
    torch.testing.assert_close(y_mixed.float(), fast(x), atol=0.05, rtol=0.05)
    # float32 operands are not rounded first: the fp32 conv, rounded once at the end.
    c0 = fast[0](x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(fast[0](x), c0.to(torch.bfloat16), atol=0, rtol=0)
