"""The settings of one training run (:class:`TrainConfig`), their checks, and the ``tat-ext train``
flags that fill them: every field carries its flag and help in ``dataclasses.field(metadata=...)``
and :func:`add_arguments` generates the parser from them, so a new setting is a new field."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

from tat_ext import _validate
from tat_ext.datasets.augment import AUGMENTS
from tat_ext.datasets.sources import DATASETS, LOCATION
from tat_ext.errors import RunError, UserError, to_flag
from tat_ext.models.registry import get_model_spec, model_names
from tat_ext.utils.parsing import comma_list

__all__ = ["OPTIMIZERS", "SCHEDULES", "Diverged", "TrainConfig", "TrainError", "add_arguments", "as_train_error",
           "flag_of", "from_args"]

OPTIMIZERS = ("adam", "sgd", "kfac", "soap")
SCHEDULES = ("cosine", "constant")
STEMS = ("small", "imagenet")

# Defaults that train the embedded digits (measured; README "Choosing the training settings").
_DEFAULT_LR = {"adam": 3e-4, "sgd": 3e-3, "kfac": 1e-4, "soap": 3e-4}  # kfac: bench/results/kfac_depth.md
_DEFAULT_WARMUP = {"kfac": 1}  # epochs; the others 0
_DEFAULT_ETA = 0.9


class TrainError(UserError):
    """A user mistake in a run's settings, data, output directory or checkpoint: the CLI prints it
    on one line and exits with status 2, and nothing on disk has been changed.

    ``TrainError(flag, detail)`` reads "flag: detail"; ``TrainError(message)`` names no flag.
    """

    def __init__(self, argument: Optional[str], message: Optional[str] = None) -> None:
        if message is None:
            argument, message = None, argument
        flag = to_flag(argument)
        if flag and not message.startswith(flag):
            message = f"{flag}: {message}"
        super().__init__(argument, message)


@contextlib.contextmanager
def as_train_error(types: bool = False) -> Iterator[None]:
    """Re-raise a UserError from the block (a helper's: a device, a path, a check) as TrainError,
    the error ``train`` and the sweep document; with ``types``, also a TypeError (a setting of the
    wrong type from a Python caller: the flags' types are always right)."""
    try:
        yield
    except TrainError:
        raise
    except UserError as error:
        raise TrainError(error.argument, error.detail) from None
    except TypeError as error:
        if not types:
            raise
        raise TrainError(None, str(error)) from None


class Diverged(RunError):
    """The training loss became NaN or infinite (usually: the learning rate is too large for this
    net). Raised at the end of the epoch, before that epoch's state is saved."""


def _setting(flag: str, default: Any, group: str, help: Union[str, Callable[[], str]],
             **argparse_kwargs: Any) -> Any:
    """A TrainConfig field set by ``flag`` in ``group`` of the parser; ``help`` may be a function
    (evaluated when the parser is built); ``argparse_kwargs`` go to ``add_argument`` (``choices``
    may be a function too)."""
    return dataclasses.field(default=default, metadata={"flag": flag, "group": group, "help": help,
                                                         "argparse": argparse_kwargs})


def _activation_help() -> str:
    from tat_ext.models.layers import activation_choices

    return ("trelu (TAT; default for the vanilla models), relu (Edge-of-Chaos baseline; the resnet baseline's "
            "only one), tat-<smooth>, dks-<name>: " + ", ".join(activation_choices()))


_int_list = comma_list(int, lambda v: True, "integers")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. ``None`` fields take a default that depends on others
    (see :meth:`resolved`); the flag of each field is ``--field-name`` (:func:`flag_of`).

    ``out=None`` writes nothing (in-process use, e.g. a sweep); ``batch_size`` is the global batch,
    split evenly across torchrun processes. ``blocks`` (resnets only) replaces the standard plan of
    ``depth`` with bottleneck blocks per stage; ``depth`` must then be 3·sum(blocks) + 2.
    """

    model: str = _setting("--model", "vanilla_resnet", "model", lambda: (
        f"{', '.join(model_names())} (tat_ext.models.registry), or your own: path/to/file.py:build or "
        "package.module:build, a callable returning an nn.Module (num_classes, in_channels and the "
        "--depth/--width/--blocks you pass are given to it if it takes them), tailored by tat_ext.auto"),
        metavar="NAME")
    depth: Optional[int] = _setting("--depth", None, "model", "resnets: 18/34/50/101/152/200; vanilla_mlp: hidden "
                                                             "layers (default 50)", type=int)
    blocks: Optional[Tuple[int, ...]] = _setting(
        "--blocks", None, "model", "resnets: a custom plan of 1-4 stages of bottleneck blocks (e.g. 1,1,1) instead "
                                   "of depth's standard one; --depth must be 3*sum+2 (its nonlinear layers + 1)",
        type=lambda text: tuple(_int_list(text)), metavar="B1,B2,...")
    width: Optional[int] = _setting("--width", None, "model", "resnets: first stage's inner width (default 8); "
                                                              "vanilla_mlp: hidden units (default 128)", type=int)
    activation: Optional[str] = _setting("--activation", None, "model", _activation_help, metavar="NAME")
    eta: Optional[float] = _setting("--eta", None, "model", f"TAT target C_f(0) for trelu (default {_DEFAULT_ETA})",
                                    type=float)
    shortcut_weight: float = _setting("--shortcut-weight", 0.0, "model",
                                      "vanilla_resnet: 0 = no shortcuts (default); w in (0, 1) = rescaled ResNet",
                                      type=float)
    stem: Optional[str] = _setting("--stem", None, "model",
                                   "resnets: small (3x3 conv, no pool, flatten head) or imagenet (7x7/2 conv, pool, "
                                   "mean-pool head); default small for images up to 64x64", choices=STEMS)
    data: str = _setting("--data", "digits", "data",
                         "digits (ships with scikit-learn), cifar10, cifar100, imagefolder (--data-dir), npz "
                         "(--data-path), synthetic; README 'Train on your own data'", choices=DATASETS)
    data_dir: Optional[str] = _setting("--data-dir", None, "data",
                                       "cifar10/cifar100: the folder with the python batches or its parent; "
                                       "imagefolder: the folder with train/<class>/ and val/<class>/ (or test/)")
    data_path: Optional[str] = _setting("--data-path", None, "data",
                                        "npz: the file with x_train, y_train, x_test, y_test")
    download: bool = _setting("--download", False, "data", "cifar10/cifar100: fetch the archive into --data-dir "
                                                           "through torchvision if it is not there",
                              action="store_true")
    augment: Optional[str] = _setting("--augment", None, "data",
                                      "none, crop-flip (pad S/8, random crop, flip) or inception (random resized crop "
                                      "to --image-size, flip; resize + center crop for evaluation); default: "
                                      "crop-flip for cifar, inception for imagefolder, none otherwise",
                                      choices=AUGMENTS)
    image_size: Optional[int] = _setting("--image-size", None, "data", "side of the model's input (default: the "
                                         "images' own; another side needs --augment inception)", type=int)
    loader_workers: int = _setting("--loader-workers", 0, "data", "processes that read and augment batches "
                                                                 "(default 0: the training process)", type=int)
    optimizer: str = _setting("--optimizer", "adam", "optimization",
                              "adam (AdamW: decoupled weight decay), sgd (Nesterov momentum 0.9), kfac "
                              "(tat_ext.optim.KFAC, the TAT paper's; settings: the --kfac-* flags) or soap "
                              "(heavyball.SOAP, the package's defaults; needs heavyball)",
                              choices=OPTIMIZERS)
    lr: Optional[float] = _setting("--lr", None, "optimization",
                                   "peak learning rate (default 3e-4 for adam and soap, 3e-3 for sgd, 1e-4 for kfac)",
                                   type=float)
    weight_decay: float = _setting("--weight-decay", 0.0, "optimization",
                                   "decoupled weight decay (adam, soap); for kfac an L2 term added to the gradient "
                                   "(default 0)",
                                   type=float)
    label_smoothing: float = _setting("--label-smoothing", 0.0, "optimization",
                                      "label smoothing of the cross-entropy (default 0)", type=float)
    schedule: str = _setting("--schedule", "cosine", "optimization",
                             "cosine decay to 0 over --epochs (its length is then fixed: --resume cannot extend it) "
                             "or constant", choices=SCHEDULES)
    warmup_epochs: Optional[int] = _setting("--warmup-epochs", None, "optimization",
                                            "linear warm-up (default 1 for kfac, else 0)", type=int)
    epochs: int = _setting("--epochs", 10, "optimization", "epochs to train", type=int)
    batch_size: int = _setting("--batch-size", 128, "optimization", "global batch, split across torchrun processes",
                               type=int)
    seed: int = _setting("--seed", 0, "optimization", "initialization and data order (default 0)", type=int)
    kfac_damping: float = _setting("--kfac-damping", 1e-3, "K-FAC (--optimizer kfac; defaults: the paper's recipe)",
                                   "Tikhonov damping, split between the factors by the pi rule", type=float)
    kfac_ema: float = _setting("--kfac-ema", 0.99, "K-FAC (--optimizer kfac; defaults: the paper's recipe)",
                               "decay of the factors' bias-corrected moving averages, in [0, 1) (short runs: "
                               "lower, e.g. 0.9)", type=float)
    kfac_curvature_period: int = _setting("--kfac-curvature-period", 1,
                                          "K-FAC (--optimizer kfac; defaults: the paper's recipe)",
                                          "update the factors every this many steps", type=int)
    kfac_inverse_period: int = _setting("--kfac-inverse-period", 50,
                                        "K-FAC (--optimizer kfac; defaults: the paper's recipe)",
                                        "recompute the damped inverses every this many steps (short runs: e.g. 10)",
                                        type=int)
    kfac_burnin: int = _setting("--kfac-burnin", 5, "K-FAC (--optimizer kfac; defaults: the paper's recipe)",
                                "first steps that only accumulate curvature", type=int)
    kfac_norm_constraint: float = _setting("--kfac-norm-constraint", 1e-3,
                                           "K-FAC (--optimizer kfac; defaults: the paper's recipe)",
                                           "bound on lr^2 <P, grad> of an update", type=float)
    kfac_momentum: float = _setting("--kfac-momentum", 0.9, "K-FAC (--optimizer kfac; defaults: the paper's recipe)",
                                    "momentum of the updates", type=float)
    kfac_fisher: str = _setting("--kfac-fisher", "mc", "K-FAC (--optimizer kfac; defaults: the paper's recipe)",
                                "mc (labels sampled from the model, the paper's) or empirical (training labels)",
                                choices=("mc", "empirical"))
    device: str = _setting("--device", "auto", "execution", "auto (cuda if available), cpu, cuda, cuda:N")
    amp: bool = _setting("--amp", False, "execution", "bfloat16 autocast", action="store_true")
    channels_last: bool = _setting("--channels-last", False, "execution", "channels_last memory format",
                                   action="store_true")
    compile: bool = _setting("--compile", False, "execution", "torch.compile the model", action="store_true")
    out: Optional[str] = _setting("--out", None, "execution",
                                  "run directory: config.json, metrics.jsonl, curves.png, checkpoint.pt")
    resume: bool = _setting("--resume", False, "execution", "continue the run in --out", action="store_true")

    def resolved(self) -> "TrainConfig":
        """The same settings with every default filled in, checked.

        Raises:
            TrainError: an out-of-range or inconsistent setting, named by its flag.
        """
        self._check()
        spec = get_model_spec(self.model)
        return dataclasses.replace(
            self,
            activation=self.activation or spec.default_activation,
            depth=self._depth(spec),
            width=spec.defaults.get("width") if self.width is None else self.width,
            eta=(_DEFAULT_ETA if self.eta is None else self.eta) if spec.uses_eta(self.activation) else None,
            lr=_DEFAULT_LR[self.optimizer] if self.lr is None else self.lr,
            warmup_epochs=(min(_DEFAULT_WARMUP.get(self.optimizer, 0), self.epochs - 1) if self.warmup_epochs is None
                           else self.warmup_epochs),
            blocks=None if self.blocks is None else tuple(self.blocks),
        )

    def _depth(self, spec) -> Optional[int]:
        """--depth, else the model's default (None for a user model: not passed to its builder)."""
        return self.depth if self.depth is not None else spec.defaults.get("depth")

    def _check(self) -> None:
        with as_train_error(types=True):
            self._check_values()

    def _check_values(self) -> None:
        """Raises UserError (or TypeError) naming the flag of the first bad setting."""
        def fail(name: str, message: str) -> None:
            raise UserError(flag_of(name), message)

        spec = get_model_spec(self.model)  # a user's builder reference is loaded here
        for name, options in (("data", DATASETS), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            _validate.one_of(flag_of(name), getattr(self, name), options)
        for name, low in (("depth", 1), ("width", 1), ("epochs", 1), ("warmup_epochs", 0), ("batch_size", 1),
                          ("seed", 0), ("image_size", 1), ("loader_workers", 0)):
            if getattr(self, name) is not None:
                _validate.integer(flag_of(name), getattr(self, name), ge=low)
        if self.blocks is not None:
            self._check_blocks(spec, fail)
        if self.warmup_epochs is not None and self.warmup_epochs >= self.epochs:
            fail("warmup_epochs", f"must be below --epochs ({self.epochs}), got {self.warmup_epochs}")
        self._check_kfac(fail)
        if self.lr is not None:
            _validate.real(flag_of("lr"), self.lr, gt=0.0)
        _validate.real(flag_of("weight_decay"), self.weight_decay, ge=0.0)
        _validate.real(flag_of("label_smoothing"), self.label_smoothing, ge=0.0, lt=1.0)
        _validate.real(flag_of("shortcut_weight"), self.shortcut_weight, ge=0.0, lt=1.0)
        if self.activation is not None and not isinstance(self.activation, str):
            fail("activation", f"must be a name, got {self.activation!r}")
        if self.eta is not None:
            _validate.eta(flag_of("eta"), self.eta)
            if not spec.uses_eta(self.activation):
                fail("eta", "applies to --activation trelu with a vanilla model only")
        if self.shortcut_weight != 0.0 and not spec.takes_shortcut_weight:
            fail("shortcut_weight", f"does not apply to --model {self.model}")
        if spec.activations is not None and self.activation not in (None,) + spec.activations:
            fail("activation", f"--model {self.model} takes {', '.join(spec.activations)}, not {self.activation}"
                               + ("; the resnet baseline uses ReLU with BatchNorm, other activations are for the "
                                  "vanilla models" if spec.batch_norm else ""))
        for name in ("data_dir", "data_path"):
            users = "/".join(n for n, k in LOCATION.items() if k == name)
            if getattr(self, name) is not None and LOCATION[self.data] != name:
                fail(name, f"applies to --data {users} only, not {self.data}")
            if getattr(self, name) is None and LOCATION[self.data] == name:
                fail(name, f"--data {self.data} needs the {'file' if name == 'data_path' else 'folder'} of its data")
        if self.download and self.data not in ("cifar10", "cifar100"):
            fail("download", f"applies to --data cifar10/cifar100 only, not {self.data}")
        for name, options in (("augment", AUGMENTS), ("stem", STEMS)):
            if getattr(self, name) is not None:
                _validate.one_of(flag_of(name), getattr(self, name), options)
        for name in ("amp", "channels_last", "compile", "resume", "download"):
            _validate.boolean(flag_of(name), getattr(self, name))
        if self.resume and self.out is None:
            fail("resume", "needs --out (the directory of the run to continue)")
        if not isinstance(self.device, str) or not self.device:
            fail("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def _check_kfac(self, fail) -> None:
        if self.optimizer != "kfac":
            for name in _KFAC_FIELDS:
                if getattr(self, name) != _FIELDS[name].default:
                    fail(name, "applies to --optimizer kfac only")
            return
        for name in ("kfac_damping", "kfac_norm_constraint"):
            _validate.real(flag_of(name), getattr(self, name), gt=0.0)
        _validate.real(flag_of("kfac_ema"), self.kfac_ema, ge=0.0, lt=1.0)
        _validate.real(flag_of("kfac_momentum"), self.kfac_momentum, ge=0.0)
        for name, low in (("kfac_curvature_period", 1), ("kfac_inverse_period", 1), ("kfac_burnin", 0)):
            _validate.integer(flag_of(name), getattr(self, name), ge=low)
        _validate.one_of(flag_of("kfac_fisher"), self.kfac_fisher, ("mc", "empirical"))

    def _check_blocks(self, spec, fail) -> None:
        blocks = self.blocks
        try:
            if not isinstance(blocks, (tuple, list)) or not 1 <= len(blocks) <= 4:
                raise ValueError("not 1 to 4 values")
            for count in blocks:
                _validate.integer("--blocks", count, ge=1)
        except (TypeError, ValueError):
            fail("blocks", f"must be 1 to 4 integers >= 1 (bottleneck blocks per stage), got {blocks!r}")
        if not spec.takes_blocks:
            fail("blocks", "applies to the resnet models only")
        depth = self._depth(spec)
        needed = None if spec.depth_of_blocks is None else spec.depth_of_blocks(tuple(blocks))
        if needed is not None and depth != needed:
            fail("blocks", f"{','.join(map(str, blocks))} (bottleneck) gives depth {needed}; "
                           f"pass --depth {needed}, not {depth}")

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# Settings that may differ between a run and its --resume: where it runs and how far it goes, and
# where the data lies (the data itself must keep its fingerprint: checkpoint.check_same_data).
# --epochs may grow only with the constant schedule (a cosine schedule's shape depends on it).
RESUMABLE_CHANGES = ("device", "compile", "out", "resume", "data_dir", "data_path", "download", "loader_workers")
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_KFAC_FIELDS = tuple(name for name in _FIELDS if name.startswith("kfac_"))


def flag_of(name: Optional[str]) -> Optional[str]:
    """The ``tat-ext train`` flag of the TrainConfig field ``name`` ("warmup_epochs" ->
    "--warmup-epochs"); None when ``name`` is not a field."""
    field = _FIELDS.get(name)
    return None if field is None else field.metadata["flag"]


def add_arguments(parser: argparse.ArgumentParser, defaults: Optional[TrainConfig] = None,
                  exclude: Tuple[str, ...] = ()) -> None:
    """The ``tat-ext train`` flags, generated from the :class:`TrainConfig` fields' metadata
    (every field but ``exclude``), with the values of ``defaults`` (default: TrainConfig())."""
    d = TrainConfig() if defaults is None else defaults
    groups: Dict[str, Any] = {}
    for name, field in _FIELDS.items():
        if name in exclude:
            continue
        meta = field.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        kwargs = dict(meta["argparse"])
        if callable(kwargs.get("choices")):
            kwargs["choices"] = kwargs["choices"]()
        help_text = meta["help"]() if callable(meta["help"]) else meta["help"]
        default = getattr(d, name)
        if default not in (None, False) and "default" not in help_text:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_text += f" (default {shown})"
        groups[meta["group"]].add_argument(meta["flag"], dest=name, default=default, help=help_text, **kwargs)


def from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``tat-ext train`` flags."""
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in _FIELDS})
