"""trustlab.models: the closed registry and every architecture's shapes and sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustlab.models import MODELS, PreActBlock, build_model, model_names

SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar": (3, 32, 32)}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_names():
    assert model_names() == sorted(MODELS) == ["cnn-large", "cnn-small", "cnn-small-quantized", "mlp", "mlp-1x100",
                                                  "mlp-1x50", "mlp-2x100", "mlp-3x100", "preact-resnet18"]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dataset", sorted(SHAPES))
def test_forward_shape(name, dataset):
    in_shape = SHAPES[dataset]
    model = build_model(name, in_shape=in_shape, num_classes=7, seed=0).eval()
    x = torch.rand(3, *in_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (3, 7)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["mlp", "mlp-1x50", "mlp-1x100", "mlp-2x100", "mlp-3x100", "cnn-small", "cnn-small-quantized",
                                  "cnn-large"])
def test_simple_models_are_sequential(name):
    assert type(build_model(name, in_shape=(1, 28, 28), num_classes=10)) is nn.Sequential


def test_cnn_small_parameter_count_mnist():
    model = build_model("cnn-small", in_shape=(1, 28, 28), num_classes=10)
    conv1 = 16 * 1 * 4 * 4 + 16
    conv2 = 32 * 16 * 4 * 4 + 32
    fc1 = (32 * 7 * 7) * 100 + 100
    fc2 = 100 * 10 + 10
    assert _n_params(model) == conv1 + conv2 + fc1 + fc2 == 166_406


def test_cnn_large_parameter_count_mnist():
    model = build_model("cnn-large", in_shape=(1, 28, 28), num_classes=10)
    conv1 = 32 * 1 * 5 * 5 + 32
    conv2 = 64 * 32 * 5 * 5 + 64
    fc1 = (64 * 7 * 7) * 1024 + 1024
    fc2 = 1024 * 10 + 10
    assert _n_params(model) == conv1 + conv2 + fc1 + fc2


def test_mlp_parameter_count_digits():
    model = build_model("mlp", in_shape=(1, 8, 8), num_classes=10)
    assert _n_params(model) == (64 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)


def test_cnn_small_flatten_width_follows_input():
    for in_shape, hw in [((1, 8, 8), 2 * 2), ((1, 28, 28), 7 * 7), ((3, 32, 32), 8 * 8)]:
        model = build_model("cnn-small", in_shape=in_shape, num_classes=10)
        assert model[5].in_features == 32 * hw


def test_preact_resnet18_structure():
    model = build_model("preact-resnet18", in_shape=(3, 32, 32), num_classes=10)
    blocks = [m for m in model.modules() if isinstance(m, PreActBlock)]
    assert len(blocks) == 8
    assert [b.conv2.out_channels for b in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [b.shortcut is not None for b in blocks] == [False, False, True, False, True, False, True, False]
    convs_and_linear = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(convs_and_linear) == 1 + 8 * 2 + 3 + 1  # stem, two per block, three shortcuts, classifier


def test_preact_block_matches_reference_formula():
    block = PreActBlock(4, 8, stride=2).eval()
    x = torch.rand(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    pre = torch.relu(block.bn1(x))
    expected = block.conv2(torch.relu(block.bn2(block.conv1(pre)))) + block.shortcut(pre)
    assert torch.equal(block(x), expected)


@pytest.mark.parametrize(
    ("name", "in_shape"),
    [("cnn-small", (1, 3, 3)), ("cnn-large", (1, 28, 3)), ("preact-resnet18", (3, 7, 7)), ("mlp", (0, 8, 8))],
)
def test_too_small_shape_names_shape(name, in_shape):
    with pytest.raises(ValueError, match=str(in_shape).replace("(", r"\(").replace(")", r"\)")):
        build_model(name, in_shape=in_shape, num_classes=10)


@pytest.mark.parametrize("bad", [(28, 28), (1, 28.0, 28), "1x28x28", (1, 28, True)])
def test_malformed_shape_is_typeerror(bad):
    with pytest.raises(TypeError, match="in_shape"):
        build_model("mlp", in_shape=bad, num_classes=10)


@pytest.mark.parametrize("bad", [1, 0, -3])
def test_num_classes_below_two(bad):
    with pytest.raises(ValueError, match=f"num_classes must be >= 2, got {bad}"):
        build_model("mlp", in_shape=(1, 8, 8), num_classes=bad)


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "resnet", "", "MLP"])
def test_unknown_name_lists_choices(name):
    with pytest.raises(ValueError, match="choose one of") as info:
        build_model(name, in_shape=(1, 8, 8), num_classes=10)
    assert all(n in str(info.value) for n in MODELS)


def test_seed_is_reproducible_and_leaves_global_rng_alone():
    before = torch.get_rng_state()
    a = build_model("cnn-small", in_shape=(1, 8, 8), num_classes=10, seed=3)
    b = build_model("cnn-small", in_shape=(1, 8, 8), num_classes=10, seed=3)
    c = build_model("cnn-small", in_shape=(1, 8, 8), num_classes=10, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, c[0].weight)


@pytest.mark.parametrize(("name", "widths"), [("mlp-1x50", [50]), ("mlp-1x100", [100]), ("mlp-2x100", [100, 100]),
                                               ("mlp-3x100", [100, 100, 100])])
def test_small_mlps_have_the_named_hidden_widths(name, widths):
    model = build_model(name, in_shape=(1, 28, 28), num_classes=10)
    linear = [m for m in model if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linear] == [*widths, 10] and linear[0].in_features == 784
    assert sum(isinstance(m, nn.ReLU) for m in model) == len(widths)
