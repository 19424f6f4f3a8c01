import pytest
import torch
from torch import nn

from cifar_lit.models import MODELS, build_model, register_model, resnet18


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


@pytest.mark.parametrize("name, parameters", [("resnet18", 11_173_962), ("resnet34", 21_282_122),
                                              ("resnet9", 6_573_130)])
def test_each_registered_network_has_its_published_parameter_count(name, parameters):
    network = build_model(name)
    assert sum(p.numel() for p in network.parameters()) == parameters
    assert network.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet34_has_3_4_6_3_blocks_and_resnet9_pools_in_three_stages():
    resnet34 = build_model("resnet34")
    assert [len(getattr(resnet34, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    resnet9 = build_model("resnet9", width=8)
    assert sum(isinstance(m, nn.MaxPool2d) for m in resnet9.modules()) == 3
    assert resnet9.prep[0].out_channels == 8 and resnet9.linear.in_features == 64, "width scales every stage"


def test_a_network_is_one_registered_factory_and_an_unknown_name_is_refused():
    @register_model
    def tiny(num_classes: int = 10, width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))

    try:
        assert build_model("tiny", 3).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    finally:
        del MODELS["tiny"]
    with pytest.raises(KeyError, match="no network named 'vgg'; the networks are resnet18, resnet34, resnet9"):
        build_model("vgg")
