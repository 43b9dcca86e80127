"""The registry: every architecture builds, its blocks reproduce the original network, freezing works."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
import torch
import torchvision.models as tvm
from torch import nn

from transferlab.core.errors import TransferlabError
from transferlab.models import BlockNet, count_parameters, create_model, get_spec, list_models

REGISTRY = [
    "alexnet", "densenet121", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "googlenet",
    "inception_v3", "mobilenet_v2", "resnet18", "resnet50", "vgg16",
]
TIMM = ["timm:resnet18", "timm:vit_tiny_patch16_224"]
ALL = REGISTRY + TIMM



def build_original(name: str) -> nn.Module:
    """The reference network, independent of transferlab's builders (torchvision/timm defaults)."""
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False)
    if name.startswith("efficientnet_lite"):
        import timm

        return timm.create_model(f"tf_efficientnet_lite{name[-1]}", pretrained=False)
    if name == "googlenet":
        # the published weights come with aux heads and expect transform_input=True
        return tvm.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=True)
    if name == "inception_v3":
        return tvm.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=True)
    return getattr(tvm, name)(weights=None)


def randomise_norm_stats(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so that a block decomposition dropping a norm layer shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def aux_parameters(model: nn.Module) -> int:
    return sum(
        count_parameters(getattr(model, a)) for a in ("AuxLogits", "aux1", "aux2") if getattr(model, a, None) is not None
    )


@pytest.fixture(scope="module", params=ALL)
def pair(request, tmp_path_factory):
    """(name, original in eval mode, BlockNet loaded from the original's state dict file, input batch)."""
    name = request.param
    torch.manual_seed(0)
    original = build_original(name)
    randomise_norm_stats(original)
    original.eval()
    path = tmp_path_factory.mktemp("orig") / f"{name.replace(':', '_')}.pth"
    torch.save(original.state_dict(), path)
    model = create_model(name, weights=path)
    path.unlink()
    size = get_spec(name).preprocessing.input_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    yield name, original, model, x
    del original, model


def test_registry_lists_every_architecture():
    assert set(REGISTRY) <= set(list_models())
    with pytest.raises(TransferlabError, match="unknown model"):
        get_spec("resnet19")
    with pytest.raises(TransferlabError, match="timm has no model"):
        get_spec("timm:no_such_net_42")


def test_blocknet_forward_equals_original(pair):
    name, original, model, x = pair
    assert isinstance(model, BlockNet)
    assert not model.training
    with torch.inference_mode():
        ref = original(x)
        out = model(x)
    assert out.shape == (2, 1000)
    assert torch.isfinite(out).all()
    assert ref.std() > 1e-3  # a degenerate all-constant output would make the comparison meaningless
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_blocks_are_ordered_with_head_last(pair):
    name, original, model, _ = pair
    names = model.block_names
    assert len(names) >= 2 and len(set(names)) == len(names)
    assert names[-1] == "head"
    assert any(m is model.classifier for m in model.head.modules())
    assert model.classifier.out_features == 1000 == model.num_classes
    # no parameter lost or duplicated by the decomposition (aux heads are dropped on purpose)
    assert count_parameters(model) == count_parameters(original) - aux_parameters(original)
    # freeze points by group name and by count agree; every parameter is in exactly one group
    groups = model.group_names
    for i, g in enumerate(groups):
        assert model.group_index(g) == i
    assert model.group_index(len(groups)) == len(groups)
    grouped = [id(p) for g in groups for p in model.group_parameters(g)]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_forward_blocks_continues_from_prefix(pair):
    name, _, model, x = pair
    with torch.inference_mode():
        full = model(x[:1])
        k = len(model.block_names) // 2
        mid = model.forward_blocks(x[:1], 0, k)
        rest = model.forward_blocks(mid, k, len(model.block_names))
    torch.testing.assert_close(rest, full)


@pytest.mark.parametrize("name", ALL)
def test_random_init_with_new_classes(name):
    torch.manual_seed(0)
    model = create_model(name, weights="none", num_classes=7)
    assert model.block_names[-1] == "head"
    assert model.num_classes == 7 and model.classifier.out_features == 7
    size = model.preprocessing.input_size
    with torch.inference_mode():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()


def test_densenet_and_vgg_are_distinct():
    dense = create_model("densenet121", weights="none")
    vgg = create_model("vgg16", weights="none")
    pd, pv = count_parameters(dense), count_parameters(vgg)
    assert 7.9e6 < pd < 8.1e6
    assert 138.0e6 < pv < 138.5e6
    assert dense.block_names != vgg.block_names
    assert any(isinstance(m, nn.BatchNorm2d) for m in dense.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in vgg.modules())
    assert get_spec("densenet121").weights.describe() != get_spec("vgg16").weights.describe()
    del dense, vgg


# --- preprocessing ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name,size,resize,mean,interp",
    [
        ("efficientnet_lite0", 224, 256, (0.5, 0.5, 0.5), "bicubic"),
        ("efficientnet_lite1", 240, 274, (0.5, 0.5, 0.5), "bicubic"),
        ("efficientnet_lite2", 260, 297, (0.5, 0.5, 0.5), "bicubic"),
    ],
)
def test_preprocessing_per_model(name, size, resize, mean, interp):
    from PIL import Image

    pre = get_spec(name).preprocessing
    assert (pre.input_size, pre.resize, tuple(pre.mean), pre.interpolation) == (size, resize, mean, interp)
    if mean == (0.5, 0.5, 0.5):
        assert tuple(pre.std) == (0.5, 0.5, 0.5)
    img = Image.new("RGB", (640, 360), (255, 0, 0))
    out = pre.eval_transform()(img)
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    # a pure red image normalises to (1-mean)/std, (0-mean)/std per channel
    expected = [(1 - pre.mean[0]) / pre.std[0], (0 - pre.mean[1]) / pre.std[1], (0 - pre.mean[2]) / pre.std[2]]
    torch.testing.assert_close(out.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "inception_v3", "alexnet", "vgg16", "densenet121",
                                  "googlenet"])
def test_torchvision_models_preprocess_as_their_weights_were_evaluated(name):
    """The preprocessing belongs to the weights: read from torchvision's own Weights.transforms()."""
    import torchvision.models as tvm

    spec = get_spec(name)
    enum_class, member = spec.weights.enum.split(".")
    reference = getattr(getattr(tvm, enum_class), member).transforms()
    pre = spec.preprocessing
    assert (pre.input_size, pre.resize) == (reference.crop_size[0], reference.resize_size[0])
    assert (list(pre.mean), list(pre.std)) == (list(reference.mean), list(reference.std))
    assert pre.interpolation == reference.interpolation.value
    if name == "mobilenet_v2":  # the V1 weights transferlab loads were evaluated at 256, not V2's 232
        assert spec.weights.enum == "MobileNet_V2_Weights.IMAGENET1K_V1" and pre.resize == 256


def test_vit_freezes_by_timm_groups_and_trains_partially(tmp_path):
    """A transformer has no stages: its freeze groups come from timm's group_matcher."""
    import transferlab

    model = create_model("timm:vit_tiny_patch16_224", num_classes=2, weights="none")
    assert len(model.group_names) > 4 and model.group_names[0] == "stem" and model.group_names[-1] == "head"
    model.freeze(2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any("patch_embed" in n for n in frozen) and any(".blocks.0." in n for n in frozen)
    assert not any(".blocks.1." in n for n in frozen)
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(data / c / f"{i}.png")
    torch.manual_seed(0)  # the trainer's seed, so both start from the same random init
    before = {n: p.detach().clone() for n, p in create_model("timm:vit_tiny_patch16_224", num_classes=2,
                                                             weights="none").named_parameters()}
    run = transferlab.train(data, model="timm:vit_tiny_patch16_224", strategy="partial", freeze=2, epochs=1,
                            weights="none", batch_size=4, workers=0, out=tmp_path / "run", progress=False,
                            cache_features="off")
    after = dict(run.model.named_parameters())
    assert torch.equal(after["blocks.body.model.blocks.0.attn.qkv.weight"],
                       before["blocks.body.model.blocks.0.attn.qkv.weight"])
    assert not torch.equal(after["blocks.body.model.blocks.1.attn.qkv.weight"],
                           before["blocks.body.model.blocks.1.attn.qkv.weight"])
    assert run.predictor.meta["frozen_blocks"] == model.group_names[:2]


def test_timm_preprocessing_from_pretrained_cfg():
    pre = get_spec("timm:vit_tiny_patch16_224").preprocessing
    assert pre.input_size == 224 and tuple(pre.mean) == (0.5, 0.5, 0.5)


# --- freezing -----------------------------------------------------------------------------------

def _bn_modes(block: nn.Module) -> list[bool]:
    return [m.training for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_freeze_by_count_and_name():
    model = create_model("resnet18", weights="none", num_classes=3)
    names = model.block_names
    assert model.freeze(2) == 2
    for i, (bname, block) in enumerate(model.blocks.items()):
        grads = {p.requires_grad for p in block.parameters()}
        if grads:
            assert grads == {i >= 2}, bname
    assert model.trainable_parameters() < count_parameters(model)
    assert model.freeze("layer3") == names.index("layer3")
    assert all(not p.requires_grad for p in model.blocks["layer2"].parameters())
    assert all(p.requires_grad for p in model.blocks["layer3"].parameters())
    assert model.freeze("-1") == len(names) - 1  # all but the head
    assert model.trainable_parameters() == count_parameters(model.head)
    assert model.freeze(0) == 0
    assert model.trainable_parameters() == count_parameters(model)


def test_frozen_batchnorm_stays_in_eval_mode():
    model = create_model("resnet18", weights="none", num_classes=3)
    model.freeze("layer2", bn_policy="frozen")
    model.train()
    assert model.training
    assert _bn_modes(model.blocks["stem"]) == [False]
    assert not any(_bn_modes(model.blocks["layer1"]))
    assert all(_bn_modes(model.blocks["layer2"])) and all(_bn_modes(model.blocks["layer4"]))
    # running stats of frozen blocks do not move in a training step
    before = model.blocks["layer1"][0].bn1.running_mean.clone()
    after_l2 = model.blocks["layer2"][0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64) * 3 + 1)
    torch.testing.assert_close(model.blocks["layer1"][0].bn1.running_mean, before)
    assert not torch.equal(model.blocks["layer2"][0].bn1.running_mean, after_l2)
    model.eval()
    assert not any(_bn_modes(model))


def test_bn_policy_train_keeps_batchnorm_training():
    model = create_model("resnet18", weights="none", num_classes=3)
    model.freeze(3, bn_policy="train")
    model.train()
    assert all(_bn_modes(model))
    assert all(not p.requires_grad for p in model.blocks["layer1"].parameters())
    with pytest.raises(ValueError, match="bn policy"):
        model.freeze(1, bn_policy="sometimes")


def test_group_index_errors():
    model = create_model("mobilenet_v2", weights="none", num_classes=3)
    n = len(model.group_names)
    with pytest.raises(ValueError, match="unknown block 'layer9'"):
        model.group_index("layer9")
    with pytest.raises(ValueError, match="out of range"):
        model.group_index(n + 1)
    with pytest.raises(ValueError, match="out of range"):
        model.freeze(-(n + 1))
    assert model.group_index(-1) == n - 1


def test_high_resolution_blocks_are_those_fed_a_quarter_of_the_image_side_or_more():
    # efficientnet_lite0 at 64 px: stem (64), stage1 (32), stage2 (32), stage3 (16) | stage4 (8)
    assert create_model("efficientnet_lite0", num_classes=3, weights="none").high_resolution_blocks(64) == 4
    # resnet18 at 224 px: stem (224), layer1 (56), layer2 (56) | layer3 (28)
    assert create_model("resnet18", num_classes=3, weights="none").high_resolution_blocks(224) == 3


def test_gradient_checkpointing_gives_the_same_step_and_batchnorm_statistics():
    import copy

    torch.manual_seed(0)
    plain = create_model("efficientnet_lite0", num_classes=3, weights="none")
    plain.freeze(1, bn_policy="train")  # frozen stem, trainable rest, every BatchNorm updating
    recomputed = copy.deepcopy(plain)
    recomputed.checkpointed_blocks = 4
    calls = {"plain": 0, "recomputed": 0}
    plain.blocks["stage1"].register_forward_pre_hook(lambda *a: calls.__setitem__("plain", calls["plain"] + 1))
    recomputed.blocks["stage1"].register_forward_pre_hook(
        lambda *a: calls.__setitem__("recomputed", calls["recomputed"] + 1))
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 1])
    for net in (plain, recomputed):
        net.train()
        nn.functional.cross_entropy(net(x), y).backward()
    assert calls == {"plain": 1, "recomputed": 2}  # stage1 really was recomputed in backward
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    for (name, a), b in zip(plain.named_buffers(), recomputed.buffers()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)  # statistics moved once, not twice
