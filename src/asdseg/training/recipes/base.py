"""What every recipe shares: building the segmenter from the config, SGD as in the papers,
Adam for the auxiliary (discriminator / confidence) networks, and saving their state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from asdseg.errors import InputError
from asdseg.networks import build_network
from asdseg.networks.confidence import SegmenterWithConfidence
from asdseg.training.config import TrainingConfig
from asdseg.training.distributed import average_gradients


class Recipe:
    """One paper's update rule. Subclasses set ``DEFAULTS`` (their loss settings, overridable
    in the config's ``loss`` section) and implement :meth:`training_step`."""

    name: ClassVar[str]
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: Uses unlabelled patches (the batch then holds labelled_per_batch labelled ones first).
    semi_supervised: ClassVar[bool] = False

    def __init__(self, config: TrainingConfig, device: torch.device) -> None:
        unknown = sorted(set(config.loss) - set(self.DEFAULTS))
        if unknown:
            raise InputError(
                f"recipe {self.name!r} has no loss setting(s) {', '.join(unknown)}; "
                f"its settings are {', '.join(sorted(self.DEFAULTS)) or 'none'}."
            )
        self.config = config
        self.device = device
        self._distributed_segmenter: DistributedDataParallel | None = None
        self.settings = {**self.DEFAULTS, **config.loss}
        self.networks: dict[str, nn.Module] = {"segmenter": self.build_segmenter()}
        self.networks.update(self.build_auxiliary_networks())
        for network in self.networks.values():
            network.to(device).train()
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "segmenter": torch.optim.SGD(
                self.segmenter.parameters(),
                lr=config.learning_rate,
                momentum=config.momentum,
                weight_decay=config.weight_decay,
            )
        }
        for name, network in self.networks.items():
            if name != "segmenter":
                self.optimizers[name] = torch.optim.Adam(
                    network.parameters(),
                    lr=self.settings.get("auxiliary_learning_rate", 1e-4),
                    betas=(0.9, 0.99),
                )

    @property
    def segmenter(self) -> nn.Module:
        """The segmenter to train with: wrapped for data parallelism under torchrun. Validation
        and export use ``networks["segmenter"]``, the plain module, on one process."""
        return self._distributed_segmenter or self.networks["segmenter"]

    def distribute(self) -> None:
        """Wrap the segmenter in DistributedDataParallel (the process group must exist)."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self._distributed_segmenter = DistributedDataParallel(
            self.networks["segmenter"], device_ids=device_ids
        )

    @property
    def num_classes(self) -> int:
        return int(self.config.network["params"]["num_classes"])

    def setting_choice(self, key: str, options: dict[str, Any]) -> Any:
        """The option a string setting names (e.g. which loss), or a clear error listing them."""
        value = self.settings[key]
        if value not in options:
            raise InputError(f"{self.name} {key} {value!r} is not one of {', '.join(options)}.")
        return options[value]

    def build_segmenter(self) -> nn.Module:
        return build_network(self.config.network["name"], self.config.network.get("params", {}))

    def build_auxiliary_networks(self) -> dict[str, nn.Module]:
        return {}

    def export_network(self) -> nn.Module:
        """The network the trained model ships (the segmenter, unless a recipe adds to it)."""
        return self.networks["segmenter"]

    def export_architecture(self) -> dict[str, Any]:
        """The model card's ``architecture`` entry that rebuilds :meth:`export_network`."""
        return self.config.network

    def card_notes(self) -> str:
        """What the model card should say about this run's choices where the paper and its
        reference code disagree."""
        return ""

    def set_learning_rate(self, learning_rate: float) -> None:
        """The segmenter's schedule; auxiliary networks keep their own fixed rate."""
        for group in self.optimizers["segmenter"].param_groups:
            group["lr"] = learning_rate

    def training_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        unlabelled_images: torch.Tensor | None,
        step: int,
    ) -> dict[str, float]:
        """One update from ``images``/``labels`` (labelled patches) and ``unlabelled_images``;
        returns the losses to log (``loss`` is the segmenter's total)."""
        raise NotImplementedError

    def update(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` and step ``optimizer``. Under torchrun, DDP has already
        averaged the segmenter's gradients; the auxiliary networks' are averaged here."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self._distributed_segmenter is not None and optimizer is not self.optimizers["segmenter"]:
            average_gradients(
                group_parameter for group in optimizer.param_groups for group_parameter in group["params"]
            )
        optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "networks": {name: network.state_dict() for name, network in self.networks.items()},
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, network in self.networks.items():
            network.load_state_dict(state["networks"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])


class ConfidenceLearningRecipe(Recipe):
    """A recipe that trains a confidence network beside the segmenter (ASDNet, DAN); the
    subclass names the network's class, the card architecture that carries both networks, and
    adds its own loss settings to DEFAULTS. The model ships both networks so that inference
    gives the confidence map."""

    confidence_network: ClassVar[Callable[..., nn.Module]]
    #: The ``architecture`` name (see ``asdseg.networks.ARCHITECTURES``) of segmenter + confidence.
    exported_architecture: ClassVar[str]
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "confidence_filters": 8,
        "confidence_sees_image": True,
        "auxiliary_learning_rate": 1e-4,
    }

    def build_auxiliary_networks(self) -> dict[str, nn.Module]:
        settings = self.settings
        network = self.confidence_network(
            self.num_classes,
            settings["confidence_sees_image"],
            settings["confidence_filters"],
            strides=self.config.network.get("params", {}).get("strides"),
        )
        return {"confidence": network}

    def export_network(self) -> nn.Module:
        return SegmenterWithConfidence(self.networks["segmenter"], self.networks["confidence"])

    def export_architecture(self) -> dict[str, Any]:
        params = dict(self.config.network.get("params", {}))
        params.update(
            confidence_filters=self.settings["confidence_filters"],
            confidence_sees_image=self.settings["confidence_sees_image"],
        )
        return {"name": self.exported_architecture, "params": params}
