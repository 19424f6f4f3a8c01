import torch
from torch import nn

from cifar_lit.models import resnet18


def test_resnet18_has_the_seed_parameter_count():
    assert sum(p.numel() for p in resnet18(num_classes=10).parameters()) == 11_173_962


def test_forward_returns_logits_per_class():
    model = resnet18(num_classes=10).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10)
    assert not torch.allclose(out.softmax(1).sum(1), out.sum(1))  # raw logits, not probabilities


def test_cifar_stem_keeps_full_resolution():
    model = resnet18()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.out_channels == 64
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    features = {}

    def keep_shape(module, inputs, output):
        features["layer4"] = output.shape

    model.layer4.register_forward_hook(keep_shape)
    model(torch.randn(1, 3, 32, 32))
    assert features["layer4"] == (1, 512, 4, 4)


def test_projection_shortcuts_only_where_shape_changes():
    model = resnet18()
    projections = [name for name, m in model.named_modules() if name.endswith("shortcut") and len(list(m.children()))]
    assert projections == ["layer2.0.shortcut", "layer3.0.shortcut", "layer4.0.shortcut"]


def test_a_narrow_network_keeps_the_shape_and_scales_the_channels():
    narrow, full = resnet18(width=8), resnet18()
    assert [name for name, _ in narrow.named_parameters()] == [name for name, _ in full.named_parameters()]
    assert narrow.conv1.out_channels == 8 and narrow.linear.in_features == 64
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_class_count_changes_only_the_classifier():
    assert resnet18(num_classes=100).linear.out_features == 100
