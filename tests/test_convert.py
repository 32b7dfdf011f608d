"""fastconv.convert / revert / fuse on real model shapes (written here in plain torch.nn),
and the places converted models go: torch.compile, save/load, deepcopy, dtype, layout."""
import copy
import importlib.util
import io
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv
from fastconv.nn import Conv2d as FastConv2d

F64 = dict(atol=1e-10, rtol=1e-10)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny shapes: OpenMP threads only add contention on the shared 2-core CI machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------

def conv_bn_act(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU6):
    """torchvision's Conv2dNormActivation layout: Sequential(conv, bn, act)."""
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        layers = [conv_bn_act(cin, hidden, 1)] if t != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2ish(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(3, 8, 3, 2), InvertedResidual(8, 8, 1, 1), InvertedResidual(8, 12, 2, 3),
            InvertedResidual(12, 12, 1, 3), conv_bn_act(12, 24, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Linear(24, classes))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one ReLU module called twice."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetish(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, 2, 2, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtish(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 2, 2), LayerNorm2d(8, eps=1e-6))
        self.stage1 = ConvNeXtBlock(8)
        self.down = nn.Sequential(LayerNorm2d(8, eps=1e-6), nn.Conv2d(8, 16, 2, 2))
        self.stage2 = ConvNeXtBlock(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(x.mean((2, 3)))


class PlainSubConv(nn.Conv2d):
    """A subclass that only adds an attribute: converted, and reverted to itself."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = "plain"


class EveryPaddingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(4, 8, 3, padding=1, padding_mode="zeros"),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, padding_mode="reflect", groups=2),
            nn.Conv2d(8, 8, (3, 1), padding=(1, 0), padding_mode="replicate", groups=8),
            nn.Conv2d(8, 16, 3, padding=1, padding_mode="circular", groups=4, stride=2),
            PlainSubConv(16, 16, 2, padding="same", dilation=(1, 2), bias=False),
            nn.Conv2d(16, 8, 3, padding="same", padding_mode="reflect", groups=8),
            nn.Conv2d(8, 8, 1, padding="valid"),
        ])

    def forward(self, x):
        for c in self.convs:
            x = torch.tanh(c(x))
        return x


MODELS = {
    "mobilenet_v2": (MobileNetV2ish, (2, 3, 16, 16), 10),
    "resnet": (ResNetish, (2, 3, 16, 16), 8),
    "convnext": (ConvNeXtish, (2, 3, 16, 16), 4),
    "every_padding": (EveryPaddingNet, (2, 4, 9, 10), 7),
}


def n_convs(model):
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def run(model, x):
    """Output and every parameter gradient, in named_parameters order."""
    model.zero_grad()
    y = model(x)
    y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape))
    return y.detach(), {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()}


def assert_same_run(a, b, tol=F64):
    torch.testing.assert_close(a[0], b[0], **tol)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], **tol, msg=name)


# ---------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_converted_model_matches(name):
    factory, shape, convs = MODELS[name]
    torch.manual_seed(0)
    model = factory().double()
    fast = fastconv.convert(model)
    rep = fast.fastconv_report
    assert len(rep.swapped) == convs == n_convs(model) and not rep.skipped
    assert sum(isinstance(m, FastConv2d) for m in fast.modules()) == convs
    assert not any(isinstance(m, FastConv2d) for m in model.modules())  # the original untouched
    x = torch.randn(*shape, dtype=torch.float64)
    for step in range(2):  # train (BN batch statistics, running stats updated), twice
        assert_same_run(run(fast, x + step), run(model, x + step))
    for m in (fast, model):
        m.eval()
    assert_same_run(run(fast, x), run(model, x))
    assert fast.state_dict().keys() == model.state_dict().keys()


def test_convert_inplace_keeps_objects_hooks_and_modes():
    torch.manual_seed(0)
    model = ResNetish().double()
    model.layer1.eval()  # mixed modes survive
    params = {n: p for n, p in model.named_parameters()}
    conv = model.layer2[0].conv1
    seen = []
    conv.register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    model.register_forward_pre_hook(lambda m, i: seen.append("pre"))
    out = fastconv.convert(model, inplace=True)
    assert out is model and model.layer2[0].conv1 is conv and isinstance(conv, FastConv2d)
    assert all(p is params[n] for n, p in model.named_parameters())
    assert model.training and not model.layer1.training and not model.layer1[0].conv1.training
    model(torch.randn(1, 3, 16, 16, dtype=torch.float64))
    assert seen == ["pre", "Conv2d"]


def test_shared_module_converted_once():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    fast = fastconv.convert(model)
    assert fast[0] is fast[2] and isinstance(fast[0], FastConv2d)
    assert len(fast.fastconv_report.swapped) == 1


class OverridingConv(nn.Conv2d):
    def forward(self, x):  # weight standardization: fastconv must not drop this
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True))
        return self._conv_forward(x, w, self.bias)


def test_skips_what_fastconv_cannot_run():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.LazyConv2d(4, 3),
        OverridingConv(4, 4, 1),
        nn.Conv2d(4, 4, 1).to(torch.bfloat16),
        nn.Conv2d(4, 4, 1, device="meta"),
        nn.Conv2d(4, 6, 1),
        torch.nn.utils.parametrizations.weight_norm(nn.Conv2d(6, 6, 1)),
    )
    with pytest.warns(fastconv.ConversionWarning) as caught:
        fast = fastconv.convert(model, filter=lambda name, m: name != "5")
    rep = fast.fastconv_report
    # One warning, naming every module convert could not run (not the one the filter excluded).
    assert len(caught) == 1 and caught[0].filename == __file__
    msg = str(caught[0].message)
    assert "5 Conv2d module(s)" in msg and all(f"{i}: " in msg for i in ("1", "2", "3", "4", "6"))
    assert "5: " not in msg and "bfloat16" in msg
    assert [n for n, _ in rep.swapped] == ["0"]
    reasons = dict(rep.skipped)
    assert "parametrized" in reasons["6"]
    assert "lazy" in reasons["1"]
    assert "overrides forward" in reasons["2"]
    assert "bfloat16" in reasons["3"]
    assert "meta" in reasons["4"]
    assert "filter" in reasons["5"]
    text = str(rep)
    assert "1 swapped, 6 skipped" in text and "lazy" in text
    assert type(fast[1]) is nn.LazyConv2d and type(fast[2]) is OverridingConv
    assert type(fast[3]) is nn.Conv2d and type(fast[5]) is nn.Conv2d
    with pytest.raises(ValueError, match="unknown algo"):
        fastconv.convert(model, algo="nope")
    # A lazy conv materialized by a forward converts normally.
    lazy = nn.Sequential(nn.LazyConv2d(4, 3))
    lazy(torch.randn(1, 3, 5, 5))
    assert len(fastconv.convert(lazy).fastconv_report.swapped) == 1


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_hook_based_weight_norm_keeps_working():
    # Old torch.nn.utils.weight_norm recomputes `weight` in a forward pre-hook (and cannot
    # be deep-copied, so convert in place): the hook survives conversion.
    conv = torch.nn.utils.weight_norm(nn.Conv2d(6, 6, 1))
    y = torch.randn(1, 6, 3, 3)
    want = conv(y)
    fastconv.convert(conv, inplace=True)
    assert isinstance(conv, FastConv2d) and len(conv.fastconv_report.swapped) == 1
    torch.testing.assert_close(conv(y), want)
    with torch.no_grad():
        conv.weight_g.mul_(2)
    torch.testing.assert_close(conv(y), 2 * want - conv.bias.reshape(1, -1, 1, 1))


def test_explicit_algo_and_report_names_it():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 3))
    with pytest.warns(fastconv.ConversionWarning, match="groups == in_channels"):
        fast = fastconv.convert(model, algo="depthwise")
    rep = fast.fastconv_report
    assert [n for n, _ in rep.swapped] == ["0"] and fast[0].algo == "depthwise"
    assert "groups == in_channels" in dict(rep.skipped)["1"]


def test_revert_round_trip():
    torch.manual_seed(0)
    model = EveryPaddingNet().double()
    fast = fastconv.convert(model)
    # The subclass becomes a subclass of it and fastconv's; its attributes stay and revert
    # restores the exact class.
    assert isinstance(fast.convs[4], PlainSubConv) and isinstance(fast.convs[4], FastConv2d)
    assert fast.convs[4].tag == "plain" and type(fast.convs[0]) is FastConv2d
    back = fastconv.revert(fast)
    assert [type(m) for m in back.modules()] == [type(m) for m in model.modules()]
    assert not any(hasattr(m, "algo") for m in back.modules())
    assert len(back.fastconv_report.swapped) == 7
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    assert_same_run(run(back, x), run(model, x))


class DescribedConv(nn.Conv2d):
    """A user's subclass with its own methods and class attribute (forward untouched)."""
    kind = "described"

    def describe(self):
        return f"{type(self).__name__} {self.in_channels}->{self.out_channels}"

    @property
    def fan_in(self):
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]


def test_convert_keeps_the_users_class_and_its_methods(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(DescribedConv(3, 4, 3, padding=1), nn.ReLU(), DescribedConv(4, 4, 1),
                          PlainSubConv(4, 4, 1)).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    want = model(x)
    fast = fastconv.convert(model)
    for m in (fast[0], fast[2]):
        assert isinstance(m, DescribedConv) and isinstance(m, FastConv2d)
        assert m.describe() == f"DescribedConv {m.in_channels}->4" and m.kind == "described"
    assert fast[0].fan_in == 27
    # One generated class per user class, and fastconv's forward is the one that runs.
    assert type(fast[0]) is type(fast[2]) is fastconv.nn.conv.converted_class(DescribedConv)
    assert type(fast[0]).forward is FastConv2d.forward
    assert isinstance(fast[3], PlainSubConv) and type(fast[3]) is not type(fast[0])
    assert_same_run(run(fast, x), run(model, x))
    torch.testing.assert_close(fast(x), want, **F64)
    # Pickling (torch.save of the whole model) and deepcopy keep the generated class.
    path = tmp_path / "m.pt"
    torch.save(fast, path)
    loaded = torch.load(path, weights_only=False)
    assert type(loaded[0]) is type(fast[0]) and loaded[0].describe() == fast[0].describe()
    torch.testing.assert_close(loaded(x), want, **F64)
    assert type(copy.deepcopy(fast)[2]) is type(fast[2])
    # revert restores the exact classes, leaving nothing of fastconv behind.
    back = fastconv.revert(fast)
    assert [type(m) for m in back.modules()] == [type(m) for m in model.modules()]
    assert not any(hasattr(m, "algo") or hasattr(m, "_packed_key") for m in back.modules())
    torch.testing.assert_close(back(x), want, **F64)


def test_fuse_warns_once_and_keeps_the_report():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1).to(torch.bfloat16)).eval()
    with pytest.warns(fastconv.ConversionWarning) as caught:
        fused = fastconv.fuse(model)
    assert len(caught) == 1 and "fastconv.fuse" in str(caught[0].message) and caught[0].filename == __file__
    assert "bfloat16" in dict(fused.fastconv_report.skipped)["2"]


# ---------------------------------------------------------------------------------------
# fuse
# ---------------------------------------------------------------------------------------

def randomize_bn(model):
    """Non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g))


@pytest.mark.parametrize("name,n_bn_left,n_act_fused", [
    ("mobilenet_v2", 0, 7),  # every Conv-BN[-ReLU6] in Sequentials
    ("resnet", 0, 1),  # all BN folded; the stem ReLU fused; blocks call one self.relu twice: kept
])
def test_fuse_matches_eval_model(name, n_bn_left, n_act_fused):
    factory, shape, convs = MODELS[name]
    torch.manual_seed(0)
    model = factory().double()
    randomize_bn(model)
    model.eval()
    fused = fastconv.fuse(model)
    rep = fused.fastconv_report
    assert len(rep.swapped) == convs
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) == n_bn_left
    acts = [m.activation for m in fused.modules() if isinstance(m, FastConv2d) and m.activation]
    assert len(acts) == n_act_fused
    assert len(rep.fused) == convs  # every conv here has a BN after it
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), **F64)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0  # copy by default
    assert "fused" in str(rep)


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.misc.Conv2dNormActivation's layout, kept local (no torchvision here)."""

    def __init__(self, cin, cout, k, stride=1, groups=1, act=nn.SiLU):
        super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace it, fuse falls back to Sequentials."""

    def __init__(self):
        super().__init__()
        self.a = Conv2dNormActivation(3, 8, 3, act=nn.GELU)
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(8, 8, 1), nn.Hardtanh(0.0, 6.0))
        self.c = nn.Conv2d(8, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.b(self.a(x))
        if y.sum() > 1e9:  # never true; but not traceable
            y = y * 2
        return self.bn(self.c(y))


def test_fuse_sequential_fallback_and_activations():
    torch.manual_seed(0)
    model = nn.Sequential(Untraceable(), Conv2dNormActivation(4, 8, 3, 2, groups=4)).double()
    randomize_bn(model)
    model.eval()
    fused = fastconv.fuse(model)
    acts = sorted(m.activation for m in fused.modules() if isinstance(m, FastConv2d) and m.activation)
    assert acts == ["gelu", "relu", "relu6", "silu"]
    bns = [n for n, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d)]
    # The BN after self.c is called from an untraceable forward: left in place.
    assert bns == ["0.bn"]
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), **F64)


def test_fuse_traced_block_and_float32():
    torch.manual_seed(0)
    block = fastconv.nn.Bottleneck(8, 4, stride=2)  # fastconv blocks fuse too (fx traced)
    randomize_bn(block)
    block.eval()
    fused = fastconv.fuse(block)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert [fused.conv1.activation, fused.conv2.activation, fused.conv3.activation] == \
        ["relu", "relu", None]
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("factory,shape,n_bn_left,acts", [
    (lambda: fastconv.nn.EfficientConvBlock(4, 4, 3), (2, 4, 6, 6), 0,
     ["silu", "silu", "silu"]),  # expand, depthwise, SE fc1
    (lambda: fastconv.nn.InvertedResidual(4, 6, 2, 3), (2, 4, 7, 7), 0, ["relu6", "relu6"]),
    (lambda: fastconv.nn.DepthwiseSeparableConv2d(4, 6, norm_layer=nn.BatchNorm2d,
                                                   activation_layer=nn.GELU), (2, 4, 5, 5), 0,
     ["gelu", "gelu"]),
    (lambda: fastconv.nn.GroupedConv2d(4, 8, groups=2, norm_layer=nn.BatchNorm2d,
                                       activation_layer=nn.ReLU), (2, 4, 5, 5), 0, ["relu"]),
])
def test_fuse_blocks(factory, shape, n_bn_left, acts):
    torch.manual_seed(0)
    block = factory().double()
    randomize_bn(block)
    block.eval()
    fused = fastconv.fuse(block)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) == n_bn_left
    assert [m.activation for m in fused.modules()
            if isinstance(m, FastConv2d) and m.activation] == acts
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x), **F64)


def test_fuse_refuses_training_mode_and_revert_keeps_fused():
    model = Conv2dNormActivation(3, 4, 3)
    with pytest.raises(ValueError, match="eval"):
        fastconv.fuse(model)
    fused = fastconv.fuse(model.eval())
    back = fastconv.revert(fused)
    assert isinstance(back[0], FastConv2d) and "one-way" in str(back.fastconv_report)


# ---------------------------------------------------------------------------------------
# where converted models go
# ---------------------------------------------------------------------------------------

def test_torch_compile_fullgraph_forward_backward():
    torch.manual_seed(0)
    model = fastconv.convert(ResNetish().double())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    # Same starting BN statistics for both runs.
    eager = copy.deepcopy(model)
    assert_same_run(run(compiled, x), run(eager, x))
    model.eval()
    eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), **F64)
    # A fused model (BN folded, ReLU in the epilogue) compiles without breaks too.
    fused = fastconv.fuse(eager)
    compiled_fused = torch.compile(fused, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled_fused(x), eager(x), **F64)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(MODELS))
def test_torch_compile_inductor_cuda(name):
    """Inductor on the GPU: no graph breaks, and the compiled converted model (train step
    and fused inference) matches the eager unconverted one; fp32 with TF32 off."""
    factory, shape, _ = MODELS[name]
    torch.manual_seed(0)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        model = factory().cuda()
        fast = fastconv.convert(copy.deepcopy(model))
        x = torch.randn(*shape, device="cuda")
        explained = torch._dynamo.explain(fast)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        compiled = torch.compile(fast, fullgraph=True, backend="inductor")

        def step(m):
            m.zero_grad()
            y = m(x)
            y.backward(torch.cos(torch.arange(y.numel(), device="cuda", dtype=y.dtype)).reshape(y.shape))
            return y.detach(), {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in m.named_parameters()}

        tol = dict(rtol=2e-4, atol=2e-4)
        assert_same_run(step(compiled), step(model), tol)
        for m in (fast, model):
            m.eval()
        randomize_bn(model)
        fast.load_state_dict(model.state_dict())
        fused = torch.compile(fastconv.fuse(copy.deepcopy(fast)), fullgraph=True, backend="inductor")
        with torch.no_grad():
            torch.testing.assert_close(fused(x), model(x), **tol)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mobilenet_v2"])
def test_compile_reduce_overhead_cuda(name):
    """CUDA graphs, the cure for a host-bound eager step: torch.compile's reduce-overhead
    mode (inductor + cudagraph trees) replays fastconv's kernels, forward and backward, and
    matches the eager unconverted model."""
    factory, shape, _ = MODELS[name]
    torch.manual_seed(0)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        model = factory().cuda()
        fast = fastconv.convert(copy.deepcopy(model))
        x = torch.randn(*shape, device="cuda")
        tol = dict(rtol=2e-4, atol=2e-4)

        # reduce-overhead: several calls, so that the graph is recorded and then replayed.
        compiled = torch.compile(fast, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):
            fast.zero_grad()
            y = compiled(x)
            y.sum().backward()
        model.zero_grad()
        y_ref = model(x)
        y_ref.sum().backward()
        torch.testing.assert_close(y.detach(), y_ref.detach(), **tol)
        for (n, p), (_, q) in zip(fast.named_parameters(), model.named_parameters()):
            torch.testing.assert_close(p.grad, q.grad, **tol, msg=n)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16_cl"])
def test_manual_cuda_graph_training_step(precision):
    """A training step (forward, backward, SGD step) captured by hand with torch.cuda.graph,
    as PyTorch's CUDA-graph recipe does it (warm-up on a side stream, static input), replays
    to the same parameters as the eager unconverted model's step."""
    factory, shape, _ = MODELS["mobilenet_v2"]
    torch.manual_seed(0)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    bf16 = precision == "bf16_cl"
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    dtype = torch.bfloat16 if bf16 else torch.float32
    try:
        model = factory().cuda().to(dtype=dtype, memory_format=fmt)
        fast = fastconv.convert(copy.deepcopy(model))
        x = torch.randn(*shape, device="cuda", dtype=dtype).to(memory_format=fmt)
        opt = torch.optim.SGD(fast.parameters(), lr=0.1)

        def step():
            opt.zero_grad(set_to_none=False)
            fast(x).float().square().mean().backward()
            opt.step()

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # plans, tiles and autograd buffers made outside the capture
                step()
        torch.cuda.current_stream().wait_stream(side)
        fast.load_state_dict(model.state_dict())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        fast.load_state_dict(model.state_dict())
        graph.replay()
        torch.cuda.synchronize()

        ref_opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ref_opt.zero_grad()
        model(x).float().square().mean().backward()
        ref_opt.step()
        tol = dict(rtol=5e-2, atol=5e-2) if bf16 else dict(rtol=2e-4, atol=2e-4)
        for (n, p), (_, q) in zip(fast.named_parameters(), model.named_parameters()):
            torch.testing.assert_close(p, q, **tol, msg=n)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def test_save_load_deepcopy_dtype_layout(tmp_path):
    torch.manual_seed(0)
    model = MobileNetV2ish().double().eval()
    fast = fastconv.convert(model)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
        # whole-model pickle
        path = tmp_path / "model.pt"
        torch.save(fast, path)
        loaded = torch.load(path, weights_only=False)
        assert isinstance(loaded.features[0][0], FastConv2d)
        torch.testing.assert_close(loaded(x), want, **F64)
        # state_dicts both ways
        buf = io.BytesIO()
        torch.save(fast.state_dict(), buf)
        buf.seek(0)
        plain = MobileNetV2ish().double().eval()
        plain.load_state_dict(torch.load(buf))
        torch.testing.assert_close(plain(x), want, **F64)
        fresh = fastconv.convert(MobileNetV2ish().double().eval())
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(fresh(x), want, **F64)
        # deepcopy
        torch.testing.assert_close(copy.deepcopy(fast)(x), want, **F64)
        # dtype
        f32 = copy.deepcopy(fast).float()
        torch.testing.assert_close(f32(x.float()), want.float(), atol=1e-5, rtol=1e-5)
        # channels_last model and input
        cl = copy.deepcopy(fast).to(memory_format=torch.channels_last)
        assert cl.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), want, **F64)


# ---------------------------------------------------------------------------------------
# benchmarks/models_gpu.py: the CPU-testable part
# ---------------------------------------------------------------------------------------

def load_models_gpu():
    path = os.path.join(ROOT, "benchmarks", "models_gpu.py")
    spec = importlib.util.spec_from_file_location("models_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_models_gpu_dry_run(tmp_path):
    mod = load_models_gpu()
    argv = ["--dry-run", "--models", "tiny_resnet", "--reps", "1", "--out", str(tmp_path)]
    assert mod.main(argv) == 0
    csv = (tmp_path / "models.csv").read_text().splitlines()
    md = (tmp_path / "models.md").read_text()
    header = csv[0].split(",")
    assert {"model", "precision", "mode", "fastconv_ms", "torch_ms", "speedup", "max_abs_err",
            "swapped", "skipped"} <= set(header)
    rows = [dict(zip(header, line.split(","))) for line in csv[1:]]
    assert {r["mode"] for r in rows} == {"forward", "forward_fused", "train_step"}
    assert {r["precision"] for r in rows} == {"tf32", "bf16_cl"} and len(rows) == 6
    assert all(r["status"] == "ok" and float(r["fastconv_ms"]) > 0 and float(r["torch_ms"]) > 0
               for r in rows)
    # bfloat16 has no CPU kernels: every layer stays torch's, and the table says so.
    assert {r["swapped"] for r in rows if r["precision"] == "bf16_cl"} == {"0"}
    assert "bfloat16" in md
    assert all(float(r["max_abs_err"]) < 1e-3 for r in rows)
    assert "| model |" in md
