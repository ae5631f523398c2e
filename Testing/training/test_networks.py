"""Shapes and gradients of every network on tiny inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asdseg.networks import build_network
from asdseg.networks.confidence import ConfidenceNetwork
from asdseg.networks.discriminator import SDMDiscriminator
from asdseg.networks.enhanced_unet import ConfidenceUNet
from asdseg.networks.vnet import VNet


def parameter_count(network: nn.Module) -> int:
    return sum(parameter.numel() for parameter in network.parameters())


def assert_every_parameter_learns(network: nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
    assert any(parameter.grad.abs().sum() > 0 for parameter in network.parameters())


def total(outputs: dict) -> torch.Tensor:
    """A scalar touching every output, for the gradient check."""
    loss = torch.zeros(())
    for value in outputs.values():
        for tensor in value if isinstance(value, list) else [value]:
            loss = loss + tensor.float().pow(2).mean()
    return loss


@pytest.mark.parametrize(
    ("name", "params", "size", "extra"),
    [
        ("vnet", {"base_filters": 2, "sdm_head": True}, 16, {"sdm": 2}),
        ("svnet", {"base_filters": 2}, 8, {}),
        ("vnet-confidence", {"base_filters": 2, "confidence_filters": 2}, 16, {"confidence": 1}),
        (
            "vnet-confidence",
            {"base_filters": 2, "confidence_sees_image": False, "simplified": True},
            8,
            {"confidence": 1},
        ),
        ("enhanced-unet", {"base_filters": 2}, 16, {}),
        ("enhanced-unet-confidence", {"base_filters": 2, "confidence_filters": 2}, 16, {"confidence": 1}),
        (
            "attention-unet",
            {"base_filters": 2},
            8,
            {
                "attention_logits": 3,
                "final_attention_logits": 3,
                "coarse_attention_logits": 3,
                "attention_map": 1,
            },
        ),
        ("attention-unet", {"base_filters": 2, "sr2_source": "coarse"}, 8, {"attention_logits": 3}),
    ],
)
def test_segmentation_networks_give_full_resolution_outputs_and_learn(
    name: str, params: dict, size: int, extra: dict[str, int]
) -> None:
    torch.manual_seed(0)
    network = build_network(name, {"num_classes": 3, **params}).train()
    image = torch.randn(2, 1, size, size, size)
    outputs = network(image)
    assert outputs["logits"].shape == (2, 3, size, size, size)
    for key, channels in extra.items():
        assert outputs[key].shape == (2, channels, size, size, size)
    if "confidence" in outputs:
        assert outputs["confidence"].min() >= 0 and outputs["confidence"].max() <= 1
    assert_every_parameter_learns(network, total(outputs))


def test_enhanced_unet_deep_supervision_at_two_coarser_scales_in_training_only() -> None:
    network = build_network("enhanced-unet", {"num_classes": 2, "base_filters": 2})
    image = torch.randn(1, 1, 32, 32, 16)
    deep = network.train()(image)["deep_supervision"]
    assert [tensor.shape[2:] for tensor in deep] == [(8, 8, 4), (16, 16, 8)]
    assert "deep_supervision" not in network.eval()(image)


def test_the_la_vnet_has_the_reference_size() -> None:
    """UA-MT / SASSNet's VNet (16 filters, 2 classes) has 9.45 M parameters; SVNet is far smaller."""
    assert parameter_count(VNet(num_classes=2)) == pytest.approx(9.45e6, rel=0.01)
    # (SVNet's own size: test_svnet_drops_only_the_innermost_level_of_the_vnet)


def receptive_field(network: torch.nn.Module, size: int = 320) -> int:
    """Voxels along x that influence the centre output voxel, found by back-propagation."""
    network = network.eval()
    for module in network.modules():  # plain weights: every path carries gradient
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            torch.nn.init.constant_(module.weight, 0.01)
    image = torch.zeros(1, 1, size, 16, 16, requires_grad=True)
    network(image)["logits"][0, 1, size // 2, 8, 8].backward()
    reached = image.grad[0, 0].abs().sum(dim=(1, 2)) > 0
    return int(reached.sum())


def test_svnet_drops_only_the_innermost_level_of_the_vnet() -> None:
    """ASDNet's SVNet (section 2.1): VNet without its innermost pool-conv-deconv level: a quarter
    of its 9.45 M parameters and a receptive field of 130 voxels against its 274 (the old
    one-conv-per-stage SVNet had 0.9 M parameters and saw 46 voxels)."""
    vnet, svnet = VNet(num_classes=2), build_network("svnet", {"num_classes": 2})
    assert parameter_count(svnet) / parameter_count(vnet) == pytest.approx(0.24, abs=0.01)
    assert receptive_field(svnet) == 130
    assert receptive_field(vnet) == 274


@pytest.mark.parametrize("with_image", [True, False])
def test_confidence_networks_give_one_logit_per_voxel(with_image: bool) -> None:
    probabilities = torch.softmax(torch.randn(2, 3, 16, 16, 8), dim=1)
    image = torch.randn(2, 1, 16, 16, 8)
    for network in (ConfidenceNetwork(3, with_image, 2), ConfidenceUNet(3, with_image, 2)):
        logits = network.train()(probabilities, image if with_image else None)
        assert logits.shape == (2, 1, 16, 16, 8)
        assert_every_parameter_learns(network, logits.pow(2).mean())


@pytest.mark.parametrize("size", [(16, 16, 16), (112, 112, 80)])
def test_sdm_discriminator_classifies_any_patch_size(size: tuple[int, int, int]) -> None:
    """The reference's fixed pooling only fits 112x112x80; the adaptive pool takes any size."""
    discriminator = SDMDiscriminator(sdm_channels=1, base_filters=2).train()
    logits = discriminator(torch.tanh(torch.randn(2, 1, *size)), torch.randn(2, 1, *size))
    assert logits.shape == (2, 2)
    assert_every_parameter_learns(discriminator, nn.functional.cross_entropy(logits, torch.tensor([0, 1])))


def test_sr2_comes_from_the_attention_maps_that_sr2_source_names() -> None:
    torch.manual_seed(0)
    image = torch.randn(1, 1, 16, 16, 16)
    final = build_network("attention-unet", {"num_classes": 3, "base_filters": 2}).eval()
    coarse = build_network(
        "attention-unet", {"num_classes": 3, "base_filters": 2, "sr2_source": "coarse"}
    ).eval()
    coarse.load_state_dict(final.state_dict())  # the same weights: only the choice of SR2 differs
    with torch.no_grad():
        outputs, other = final(image), coarse(image)
    torch.testing.assert_close(outputs["attention_logits"], outputs["final_attention_logits"])
    torch.testing.assert_close(other["attention_logits"], outputs["coarse_attention_logits"])
    torch.testing.assert_close(other["logits"], outputs["logits"])
    assert not torch.allclose(outputs["final_attention_logits"], outputs["coarse_attention_logits"])
    # the spatial weight is the final attention maps' probability of any organ
    organ = 1 - torch.softmax(outputs["final_attention_logits"], dim=1)[:, :1]
    torch.testing.assert_close(outputs["attention_map"], organ)


#: Thick slices: z kept at the first level, halved at the two middle ones, kept at the last.
THICK_SLICE_STRIDES = [[2, 2, 1], [2, 2, 2], [2, 2, 2], [1, 1, 1]]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("vnet", {"sdm_head": True, "strides": THICK_SLICE_STRIDES}),
        ("svnet", {"strides": THICK_SLICE_STRIDES[:3]}),
        ("vnet-confidence", {"strides": THICK_SLICE_STRIDES}),
        ("enhanced-unet-confidence", {"strides": THICK_SLICE_STRIDES}),
        ("attention-unet", {"strides": THICK_SLICE_STRIDES[:3]}),
    ],
)
def test_networks_with_strides_take_a_patch_of_what_their_levels_divide_and_learn(
    name: str, params: dict
) -> None:
    """40 x 40 x 12 is no multiple of 16: only a network that halves z twice takes it."""
    torch.manual_seed(0)
    network = build_network(name, {"num_classes": 2, "base_filters": 2, **params}).train()
    outputs = network(torch.randn(2, 1, 40, 40, 12))
    assert outputs["logits"].shape == (2, 2, 40, 40, 12)
    assert_every_parameter_learns(network, total(outputs))
    with pytest.raises(RuntimeError):
        build_network(name, {"num_classes": 2, "base_filters": 2})(torch.randn(1, 1, 40, 40, 12))


def test_every_level_halving_every_axis_is_the_networks_default() -> None:
    """Shipped models name no strides; naming 2 everywhere builds the same weights' shapes."""
    default = build_network("vnet", {"sdm_head": True}).state_dict()
    explicit = build_network("vnet", {"sdm_head": True, "strides": [[2, 2, 2]] * 4}).state_dict()
    assert {key: value.shape for key, value in default.items()} == {
        key: value.shape for key, value in explicit.items()
    }
    with pytest.raises(ValueError, match="strides must give 4 levels of three factors, each 1 or 2"):
        build_network("vnet", {"strides": [[2, 2, 3]] * 4})
