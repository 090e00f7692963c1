"""Model, optimizer and learning-rate schedule of a run, from its settings."""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from tat_ext.datasets.core import ImageData
from tat_ext.models.common import StagePlan
from tat_ext.models.registry import ModelRequest, get_model_spec
from tat_ext.train.config import TrainConfig, TrainError

__all__ = ["WarmupCosine", "build_model", "build_optimizer", "build_schedule"]

# Images up to this side get the small-input stem and the flatten head (see vanilla_resnet).
_SMALL_INPUT_MAX = 64


def build_model(config: TrainConfig, data: ImageData,
                image_size: Optional[int] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """The model for ``config`` (resolved) and ``data`` (built by its registered
    :class:`~tat_ext.models.registry.ModelSpec`), and what it resolved to (for config.json).

    Classes and channels come from ``data``; ``image_size`` is the side the model sees (default:
    the stored images'). The stem follows ``config.stem``, else the side: the small-input stem and
    flatten head up to 64x64, the ImageNet stem and mean-pool head above.

    Raises:
        ValueError: the model builder's message (unsupported depth, unreachable eta, ...); a
            :class:`~tat_ext.errors.UserError` names the builder's argument.
    """
    side = data.image_size if image_size is None else image_size
    small = side <= _SMALL_INPUT_MAX if config.stem is None else config.stem == "small"
    spec = get_model_spec(config.model)
    model = spec.builder(ModelRequest(
        depth=config.depth, width=config.width, activation=config.activation, eta=config.eta,
        shortcut_weight=config.shortcut_weight, blocks=config.blocks, num_classes=data.num_classes,
        in_channels=data.in_channels, image_size=side, small_input=small))
    resolved: Dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "small_input": small if isinstance(getattr(model, "plan", None), StagePlan) else None,
    }
    activation = getattr(model, "activation", None)
    if spec.describe is not None:
        resolved.update(spec.describe(model))
    elif activation is not None:
        resolved["activation"] = {"name": activation.name, "init_gain": activation.init_gain, **activation.params}
    else:
        resolved["activation"] = {"name": "relu+batchnorm"}
    return model, resolved


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay; plain Adam when it is 0), SGD with Nesterov momentum 0.9,
    K-FAC (:class:`tat_ext.optim.KFAC` with the ``kfac_*`` settings; ``weight_decay`` is then an L2
    term, and the MC labels are keyed to ``seed``) or SOAP (``heavyball.SOAP``, see :func:`_soap`)."""
    if config.optimizer == "kfac":
        from tat_ext.optim.kfac import KFAC

        return KFAC(model, config.lr, momentum=config.kfac_momentum, damping=config.kfac_damping,
                    curvature_ema=config.kfac_ema, curvature_update_period=config.kfac_curvature_period,
                    inverse_update_period=config.kfac_inverse_period, burnin_steps=config.kfac_burnin,
                    norm_constraint=config.kfac_norm_constraint, fisher=config.kfac_fisher,
                    weight_decay=config.weight_decay, seed=config.seed)
    if config.optimizer == "soap":
        return _soap(config, model)
    params = model.parameters()
    if config.optimizer == "adam":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)


def _soap(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """heavyball.SOAP with its own defaults except the rate and decoupled weight decay (ours:
    default 0, heavyball's 0.01). On a CPU-only run heavyball's torch.compile of the update is
    turned off (``heavyball.utils.compile_mode = None``, a process-wide switch): on this project's
    CPU, compiling it ran inductor's autotuning (about 5.5 s per tuned kernel) before training.

    Raises:
        TrainError: heavyball is not installed (named under --optimizer).
    """
    try:
        import heavyball
    except ImportError:
        raise TrainError("--optimizer", "soap needs the heavyball package: pip install 'heavyball==3.2.*'") from None
    if all(p.device.type == "cpu" for p in model.parameters()):
        heavyball.utils.compile_mode = None
    # our LR schedulers change the rate every step, which heavyball supports with multi_tensor=True
    # (its default) but warns about on every run
    warnings.filterwarnings("ignore", message="Learning rate changed between steps", module="heavyball")
    return heavyball.SOAP(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


class WarmupCosine:
    """Learning-rate factor of step ``s``: linear warm-up, then cosine decay to 0 (or constant)."""

    def __init__(self, total_steps: int, warmup_steps: int, cosine: bool) -> None:
        self.total_steps, self.warmup_steps, self.cosine = total_steps, warmup_steps, cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule (stepped after every optimizer step)."""
    factor = WarmupCosine(config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch,
                          config.schedule == "cosine")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
