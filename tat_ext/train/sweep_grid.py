"""The grid of the depth sweep (``tat-ext sweep``): its methods, depths, learning rates and
seeds (:class:`SweepSettings`), how a depth maps to a stage plan (:func:`depth_plan`) and TAT's η
at each depth (:func:`trelu_eta`). The rules are in :mod:`tat_ext.train.sweep`'s docstring; the
execution is there, the tables and figure in :mod:`tat_ext.train.sweep_report`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tat_ext import _validate
from tat_ext.errors import UserError
from tat_ext.models.common import STANDARD_DEPTHS, stage_plan
from tat_ext.models.registry import get_model_spec
from tat_ext.train.config import TrainConfig, as_train_error

__all__ = ["DEFAULT_DEPTHS", "DEFAULT_ETA", "DEFAULT_LRS", "DEFAULT_METHODS", "DEFAULT_SEEDS", "METHODS",
           "SWEEP_DEFAULTS", "VALIDATION_EVERY", "Method", "RunSpec", "SweepSettings", "depth_plan", "layers_of",
           "trelu_eta"]


@dataclass(frozen=True)
class Method:
    """A compared method: its label and the model/activation a run of it trains."""

    label: str
    model: str
    activation: Optional[str]


METHODS: Dict[str, Method] = {
    "trelu": Method("TAT (TReLU)", "vanilla_resnet", "trelu"),
    "relu": Method("EOC ReLU", "vanilla_resnet", "relu"),
    "resnet": Method("ResNet+BN", "resnet", None),
}
DEFAULT_METHODS = ("trelu", "relu", "resnet")
DEFAULT_DEPTHS = (10, 25, 50, 100, 200)
DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3)  # Adam
DEFAULT_SEEDS = 3
DEFAULT_ETA = 0.9
VALIDATION_EVERY = 5
# The shared training settings: the default grid of 180 runs took 62 min with 2 workers on the
# 2-core development VM (bench/results/sweep_depth.md).
SWEEP_DEFAULTS = TrainConfig(model="vanilla_resnet", width=8, data="digits", optimizer="adam", epochs=10,
                             batch_size=128)
# Settings that each run sets itself; the others are the sweep's shared training settings.
_PER_RUN = ("model", "depth", "blocks", "activation", "eta", "lr", "seed", "out", "resume")
# Shared settings that do not change a run's result beyond rounding: may differ on resume.
_NOT_IDENTITY = ("device", "compile")
_MIN_DEPTH = 4  # one bottleneck block (3 layers) and the final activation


def depth_plan(depth: int) -> Tuple[int, ...]:
    """Bottleneck blocks per stage for ``depth`` nonlinear layers (see the module docstring).

    Raises:
        ValueError: ``depth`` < 4 (one block and the final activation).
    """
    depth = _validate.integer("depth", depth, ge=_MIN_DEPTH)  # nonlinear layers
    count = round((depth - 1) / 3)  # (depth − 1)/3 is never halfway between integers
    if 3 * count + 2 in STANDARD_DEPTHS:  # 50, 101, 152, 200 (18 and 34 are never 3B + 2)
        return stage_plan(3 * count + 2, 1).blocks
    stages = min(count, 4)
    blocks = [count // stages] * stages
    for stage in (2, 1, 0)[: count % stages]:
        blocks[stage] += 1
    return tuple(blocks)


def layers_of(blocks: Sequence[int]) -> int:
    """Nonlinear layers on the deepest path of a plan of bottleneck blocks."""
    return 3 * sum(blocks) + 1


def trelu_eta(layers: int, target: float = DEFAULT_ETA) -> float:
    """TAT's η for a chain of ``layers`` TReLU layers: ``target`` if reachable, else the largest
    reachable η (ReLU's C_f(0)) rounded down to two decimals (see the module docstring)."""
    from tat_ext.cmaps import trelu_chain_c_map

    reachable = trelu_chain_c_map(0.0, 0.0, layers)
    return target if reachable >= target else math.floor(reachable * 100) / 100


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid."""

    method: str
    depth: int
    lr: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}/d{self.depth}/lr{self.lr:g}/s{self.seed}"


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep runs. ``base`` holds the shared training settings; each run sets the fields of
    ``_PER_RUN`` itself. ``seeds``: seeds 0 … seeds − 1."""

    base: TrainConfig = SWEEP_DEFAULTS
    depths: Tuple[int, ...] = DEFAULT_DEPTHS
    methods: Tuple[str, ...] = DEFAULT_METHODS
    seeds: int = DEFAULT_SEEDS
    lrs: Tuple[float, ...] = DEFAULT_LRS
    eta: float = DEFAULT_ETA
    threads: int = 1
    validation_every: int = VALIDATION_EVERY

    def check(self) -> None:
        """Raises TrainError naming the option of the first bad setting."""
        with as_train_error(types=True):
            self._check_grid()
        for spec in self.runs()[:1]:
            self.config(spec)  # the shared settings, checked by TrainConfig

    def _check_grid(self) -> None:
        def fail(option: str, message: str) -> None:
            raise UserError(option, message)

        for option, values in (("--depths", self.depths), ("--methods", self.methods), ("--lrs", self.lrs)):
            if not values:
                fail(option, "needs at least one value")
            duplicates = sorted({v for v in values if list(values).count(v) > 1}, key=str)
            if duplicates:
                fail(option, f"{', '.join(map(str, duplicates))} listed more than once")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            fail("--methods", f"unknown {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)}")
        layers: Dict[int, int] = {}
        for depth in self.depths:
            try:
                plan = layers_of(depth_plan(depth))
            except UserError as error:
                fail("--depths", error.message)
            if plan in layers:
                fail("--depths", f"{layers[plan]} and {depth} both map to {plan} nonlinear layers")
            layers[plan] = depth
        for lr in self.lrs:
            _validate.real("--lrs", lr, gt=0.0)
        _validate.integer("--seeds", self.seeds, ge=1)
        _validate.integer("--threads", self.threads, ge=1)
        _validate.eta("--eta", self.eta)

    def runs(self) -> List[RunSpec]:
        """Every run, longest first (deepest, then the BatchNorm net), so workers finish together."""
        specs = [RunSpec(m, d, float(lr), s) for d in self.depths for m in self.methods for lr in self.lrs
                 for s in range(self.seeds)]
        return sorted(specs, key=lambda r: (-r.depth, not get_model_spec(METHODS[r.method].model).batch_norm))

    def config(self, spec: RunSpec) -> TrainConfig:
        """The resolved TrainConfig of ``spec`` (raises TrainError on a bad shared setting)."""
        method, blocks = METHODS[spec.method], depth_plan(spec.depth)
        uses_eta = get_model_spec(method.model).uses_eta(method.activation)
        eta = trelu_eta(layers_of(blocks), self.eta) if uses_eta else None
        return dataclasses.replace(self.base, model=method.model, depth=layers_of(blocks) + 1, blocks=blocks,
                                   activation=method.activation, eta=eta, lr=spec.lr, seed=spec.seed,
                                   out=None, resume=False).resolved()

    def identity(self) -> Dict[str, Any]:
        """The settings that decide a run's result apart from its own (method, depth, lr, seed)."""
        shared = {k: v for k, v in self.base.as_dict().items() if k not in _PER_RUN + _NOT_IDENTITY}
        resolved = self.base.resolved()
        shared["width"], shared["warmup_epochs"] = resolved.width, resolved.warmup_epochs
        return {**shared, "eta": self.eta, "validation_every": self.validation_every}


