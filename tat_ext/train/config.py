"""The settings of one training run (:class:`TrainConfig`), their checks, and the ``tat-ext train``
flags that fill them."""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from tat_ext.datasets import DATASETS

__all__ = ["MODELS", "OPTIMIZERS", "SCHEDULES", "Diverged", "TrainConfig", "TrainError", "add_arguments",
           "from_args"]

MODELS = ("vanilla_resnet", "resnet", "vanilla_mlp")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")

# Defaults that train the embedded digits (measured; README "Choosing the training settings").
_DEFAULT_WIDTH = {"vanilla_resnet": 8, "resnet": 8, "vanilla_mlp": 128}
_DEFAULT_LR = {"adam": 3e-4, "sgd": 3e-3}
_DEFAULT_ETA = 0.9


class TrainError(ValueError):
    """A user mistake in a run's settings, data, output directory or checkpoint: the CLI prints it
    on one line and exits with status 2, and nothing on disk has been changed."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite (usually: the learning rate is too large for this
    net). Raised at the end of the epoch, before that epoch's state is saved."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. ``None`` fields take a default that depends on others
    (see :meth:`resolved`); the flag of each field is ``--field-name``.

    ``out=None`` writes nothing (in-process use, e.g. a sweep); ``batch_size`` is the global batch,
    split evenly across torchrun processes. ``blocks`` (resnets only) replaces the standard plan of
    ``depth`` with bottleneck blocks per stage; ``depth`` must then be 3·sum(blocks) + 2.
    """

    model: str = "vanilla_resnet"
    depth: int = 50
    blocks: Optional[Tuple[int, ...]] = None
    width: Optional[int] = None
    activation: Optional[str] = None
    eta: Optional[float] = None
    shortcut_weight: float = 0.0
    data: str = "digits"
    data_dir: Optional[str] = None
    optimizer: str = "adam"
    lr: Optional[float] = None
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: int = 0
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    out: Optional[str] = None
    resume: bool = False

    def resolved(self) -> "TrainConfig":
        """The same settings with every default filled in, checked.

        Raises:
            TrainError: an out-of-range or inconsistent setting, named by its flag.
        """
        self._check()
        return dataclasses.replace(
            self,
            activation=self.activation or ("relu" if self.model == "resnet" else "trelu"),
            width=_DEFAULT_WIDTH[self.model] if self.width is None else self.width,
            eta=(_DEFAULT_ETA if self.eta is None else self.eta) if self._uses_eta else None,
            lr=_DEFAULT_LR[self.optimizer] if self.lr is None else self.lr,
            blocks=None if self.blocks is None else tuple(self.blocks),
        )

    @property
    def _uses_eta(self) -> bool:
        return self.model != "resnet" and self.activation in (None, "trelu")

    def _check(self) -> None:
        def fail(field: str, message: str) -> None:
            raise TrainError(f"--{field.replace('_', '-')}: {message}")

        def choice(field: str, options) -> None:
            if getattr(self, field) not in options:
                fail(field, f"must be one of {', '.join(options)}, got {getattr(self, field)!r}")

        def integer(field: str, low: int) -> None:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                fail(field, f"must be an integer >= {low}, got {value!r}")

        def real(field: str, low: float, high: float, low_open: bool, high_open: bool) -> None:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(field, f"must be a finite number, got {value!r}")
            if value < low or (low_open and value == low) or value > high or (high_open and value == high):
                fail(field, f"must lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}, "
                            f"got {value!r}")

        choice("model", MODELS)
        choice("data", DATASETS)
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        integer("depth", 1)
        if self.width is not None:
            integer("width", 1)
        integer("epochs", 1)
        integer("warmup_epochs", 0)
        integer("batch_size", 1)
        integer("seed", 0)
        if self.blocks is not None:
            self._check_blocks(fail)
        if self.warmup_epochs >= self.epochs:
            fail("warmup_epochs", f"must be below --epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.lr is not None:
            real("lr", 0.0, math.inf, True, True)
        real("weight_decay", 0.0, math.inf, False, True)
        real("label_smoothing", 0.0, 1.0, False, True)
        real("shortcut_weight", 0.0, 1.0, False, True)
        if self.eta is not None:
            real("eta", 0.0, 1.0, True, True)
            if not self._uses_eta:
                fail("eta", "applies to --activation trelu with a vanilla model only")
        if self.shortcut_weight != 0.0 and self.model != "vanilla_resnet":
            fail("shortcut_weight", "applies to --model vanilla_resnet only")
        if self.model == "resnet" and self.activation not in (None, "relu"):
            fail("activation", f"the resnet baseline uses ReLU with BatchNorm, not {self.activation}; "
                               "other activations are for the vanilla models")
        if self.activation is not None and not isinstance(self.activation, str):
            fail("activation", f"must be a name, got {self.activation!r}")
        if self.data_dir is not None and self.data != "cifar10":
            fail("data_dir", f"applies to --data cifar10 only, not {self.data}")
        if self.data == "cifar10" and self.data_dir is None:
            fail("data_dir", "--data cifar10 needs the folder with its python batches")
        if self.resume and self.out is None:
            fail("resume", "needs --out (the directory of the run to continue)")
        for flag in ("amp", "channels_last", "compile", "resume"):
            if not isinstance(getattr(self, flag), bool):
                fail(flag, f"must be a bool, got {getattr(self, flag)!r}")
        if not isinstance(self.device, str) or not self.device:
            fail("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def _check_blocks(self, fail) -> None:
        blocks = self.blocks
        if (isinstance(blocks, (str, bytes)) or not isinstance(blocks, (tuple, list)) or not 1 <= len(blocks) <= 4
                or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blocks)):
            fail("blocks", f"must be 1 to 4 integers >= 1 (bottleneck blocks per stage), got {blocks!r}")
        if self.model == "vanilla_mlp":
            fail("blocks", "applies to the resnet models only")
        if self.depth != 3 * sum(blocks) + 2:
            fail("blocks", f"{','.join(map(str, blocks))} (bottleneck) gives depth {3 * sum(blocks) + 2}; "
                           f"pass --depth {3 * sum(blocks) + 2}, not {self.depth}")

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# Settings that may differ between a run and its --resume: where it runs and how far it goes.
# --epochs may grow only with the constant schedule (a cosine schedule's shape depends on it).
RESUMABLE_CHANGES = ("device", "compile", "out", "resume")


def _int_tuple(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser, defaults: Optional[TrainConfig] = None,
                  exclude: tuple = ()) -> None:
    """The ``tat-ext train`` flags (every :class:`TrainConfig` field but ``exclude``), with
    ``defaults`` (default: TrainConfig())."""
    from tat_ext.models import activation_choices

    d = TrainConfig() if defaults is None else defaults
    class _Group:
        def __init__(self, title: str) -> None:
            self.group = parser.add_argument_group(title)

        def add_argument(self, flag: str, **kwargs) -> None:
            if flag[2:].replace("-", "_") not in exclude:
                self.group.add_argument(flag, **kwargs)

    g = _Group("model")
    g.add_argument("--model", choices=MODELS, default=d.model, help=f"network family (default {d.model})")
    g.add_argument("--depth", type=int, default=d.depth,
                   help=f"resnets: 18/34/50/101/152/200; vanilla_mlp: hidden layers (default {d.depth})")
    g.add_argument("--blocks", type=_int_tuple, default=d.blocks, metavar="B1,B2,...",
                   help="resnets: a custom plan of 1-4 stages of bottleneck blocks (e.g. 1,1,1) instead of "
                        "depth's standard one; --depth must be 3*sum+2 (its nonlinear layers + 1)")
    g.add_argument("--width", type=int, help="resnets: first stage's inner width (default 8); "
                                             "vanilla_mlp: hidden units (default 128)")
    g.add_argument("--activation", default=d.activation, metavar="NAME",
                   help="trelu (TAT; default for the vanilla models), relu (Edge-of-Chaos baseline; the "
                        "resnet baseline's only one), tat-<smooth>, dks-<name>: " + ", ".join(activation_choices()))
    g.add_argument("--eta", type=float, help=f"TAT target C_f(0) for trelu (default {_DEFAULT_ETA})")
    g.add_argument("--shortcut-weight", type=float, default=d.shortcut_weight,
                   help="vanilla_resnet: 0 = no shortcuts (default); w in (0, 1) = rescaled ResNet")
    g = _Group("data")
    g.add_argument("--data", choices=DATASETS, default=d.data, help="default digits (ships with scikit-learn)")
    g.add_argument("--data-dir", help="cifar10: folder with data_batch_1..5 and test_batch (never downloaded)")
    g = _Group("optimization")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="adam (AdamW: decoupled weight decay; default) or sgd (Nesterov momentum 0.9)")
    g.add_argument("--lr", type=float, help="peak learning rate (default 3e-4 for adam, 3e-3 for sgd)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default 0")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="default 0")
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                   help="cosine decay to 0 over --epochs (default) or constant")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs, help="linear warm-up (default 0)")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"global batch, split across torchrun processes (default {d.batch_size})")
    g.add_argument("--seed", type=int, default=d.seed, help="initialization and data order (default 0)")
    g = _Group("execution")
    g.add_argument("--device", default=d.device, help="auto (default: cuda if available), cpu, cuda, cuda:N")
    g.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--out", help="run directory: config.json, metrics.jsonl, curves.png, checkpoint.pt")
    g.add_argument("--resume", action="store_true", help="continue the run in --out")


def from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``tat-ext train`` flags."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
