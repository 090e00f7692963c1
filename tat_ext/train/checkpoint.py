"""The run directory: its files, the checkpoint format, and the checks before a run writes there.

``checkpoint.pt`` (``torch.save``; loads with ``torch.load(weights_only=True)``) is a dict:

- ``"format"``: ``"tat_ext.train/1"``;
- ``"config"``: the run's resolved settings (:meth:`TrainConfig.as_dict`) and ``"resolved"``:
  what they resolved to (the activation's solved slope/scale, parameter count, ...);
- ``"model"``: the model's ``state_dict`` (of the plain module: no DDP/compile prefixes);
- ``"optimizer"``, ``"scheduler"``: their ``state_dict``s;
- ``"rng"``: ``"torch"`` (and ``"cuda"``) generator states, ``"numpy"``, ``"python"``, and
  ``"data_order"``: the data-order generator's state at the start of epoch ``"epoch"``;
- ``"epoch"``: completed epochs; ``"batch"``: completed batches of the next epoch (non-zero only
  for a checkpoint saved on Ctrl-C), with ``"partial"``: that epoch's running sums;
- ``"history"``: the metrics rows of the completed epochs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

from tat_ext.train.config import RESUMABLE_CHANGES, TrainConfig, TrainError, flag_of
from tat_ext.utils.files import atomic_write, ensure_writable_dir, remove_stale_temporaries, write_text_atomic

__all__ = [
    "CHECKPOINT", "CONFIG", "CURVES", "FORMAT", "METRICS", "RUN_FILES",
    "capture_rng", "load_checkpoint", "prepare_run_dir", "restore_rng", "save_checkpoint", "write_config",
]

FORMAT = "tat_ext.train/1"
CHECKPOINT, CONFIG, METRICS, CURVES = "checkpoint.pt", "config.json", "metrics.jsonl", "curves.png"
RUN_FILES = (CHECKPOINT, CONFIG, METRICS, CURVES)
_FLAGGED = {f.name for f in dataclasses.fields(TrainConfig)}
_REQUIRED = ("format", "config", "model", "optimizer", "scheduler", "rng", "epoch", "batch", "partial",
             "history")


def capture_rng(data_order: torch.Tensor) -> Dict[str, Any]:
    """Every generator a run draws from (as tensors and plain types, for weights_only loading)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {"torch": torch.get_rng_state(),
           "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
           "python": random.getstate(),
           "data_order": data_order}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: Dict[str, Any]) -> torch.Tensor:
    """Restore the global generators; returns the data-order generator state."""
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(_as_tuples(rng["python"]))
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return rng["data_order"]


def _as_tuples(value: Any) -> Any:
    """random.setstate needs tuples; a checkpoint may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(run_dir: str, payload: Dict[str, Any]) -> None:
    """Write ``run_dir/checkpoint.pt`` atomically (the previous one survives any crash)."""
    atomic_write(os.path.join(run_dir, CHECKPOINT), lambda f: torch.save({"format": FORMAT, **payload}, f))


def write_config(run_dir: str, config: TrainConfig, resolved: Dict[str, Any]) -> None:
    """``config.json``: every setting and what it resolved to, atomically."""
    write_text_atomic(os.path.join(run_dir, CONFIG),
                      json.dumps({"config": config.as_dict(), "resolved": resolved}, indent=2) + "\n")


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read and sanity-check a checkpoint.

    Raises:
        TrainError: unreadable, truncated, or not a tat-ext checkpoint.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a damaged file
        raise TrainError("--resume", f"{path} is corrupt or not a tat-ext checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'no detail'}); "
                         "it was left as it is") from None
    if (not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or any(k not in ckpt for k in _REQUIRED)
            or not isinstance(ckpt["config"], dict) or not isinstance(ckpt["history"], list)):
        raise TrainError("--resume", f"{path} is not a {FORMAT} checkpoint; it was left as it is")
    return ckpt


def _run_identity(config: Dict[str, Any], epochs_may_change: bool) -> Dict[str, Any]:
    """The settings that define a run's result (those that --resume may not change)."""
    identity = {k: _as_tuples(v) for k, v in config.items() if k not in RESUMABLE_CHANGES}  # JSON: lists
    if epochs_may_change:
        identity.pop("epochs", None)
    return identity


def check_same_run(saved: Dict[str, Any], config: TrainConfig, where: str) -> None:
    """Raise TrainError naming every setting that differs from the saved run's (what it was, what
    was passed). ``--epochs`` may differ when both the run and this call use the constant schedule
    (it can simply run longer); a cosine schedule decays to 0 at its last epoch, so its length is fixed."""
    constant = saved.get("schedule") == "constant" and config.schedule == "constant"
    old, new = _run_identity(saved, constant), _run_identity(config.as_dict(), constant)
    keys = sorted(set(old) | set(new))
    diff = [f"{flag_of(k) if k in _FLAGGED else k} {old.get(k)!r} -> {new.get(k)!r}"
            for k in keys if old.get(k) != new.get(k)]
    if diff:
        hint = ""
        if old.get("epochs") != new.get("epochs"):
            hint = (f" (a run made with --schedule {saved.get('schedule')} cannot be extended: its learning rate "
                    "decays to 0 at its last epoch; --epochs may change only for a run made with --schedule "
                    "constant)" if saved.get("schedule") != "constant" else
                    " (--epochs may change only with --schedule constant)")
        raise TrainError("--resume", f"the run in {where} was made with other settings: {'; '.join(diff)} "
                                     f"(saved -> passed). Use the saved settings{hint}, or another --out")


def prepare_run_dir(config: TrainConfig) -> Optional[Dict[str, Any]]:
    """Check ``config.out`` before anything is written; returns the checkpoint to resume, if any.

    Without --resume, ``out`` must not hold a run (any of its files). With --resume it must hold
    this run: a checkpoint with the same settings, or — when the first process died before its
    first checkpoint — a config.json with the same settings (then training starts over).

    Raises:
        TrainError: see above, or an unreadable checkpoint/config; nothing is changed on disk then.
    """
    out = config.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise TrainError("--out", f"{out} exists and is not a directory")
    present = [n for n in RUN_FILES if os.path.exists(os.path.join(out, n))]
    if not config.resume:
        if present:
            raise TrainError("--out", f"{out} already holds a run ({', '.join(present)}); pass --resume to "
                             "continue it, or choose another --out")
        ensure_writable_dir(out, "--out")
        return None
    if not present:
        raise TrainError("--resume", f"{out} holds no run to continue (no {CONFIG} or {CHECKPOINT})")
    checkpoint_path = os.path.join(out, CHECKPOINT)
    if os.path.exists(checkpoint_path):
        ckpt = load_checkpoint(checkpoint_path)
        check_same_run(ckpt["config"], config, checkpoint_path)
        if config.schedule == "constant" and ckpt["epoch"] > config.epochs:
            raise TrainError("--epochs", f"the run in {out} already completed {ckpt['epoch']} epochs, "
                             f"more than --epochs {config.epochs}")
    else:
        ckpt = None
        config_path = os.path.join(out, CONFIG)
        try:
            with open(config_path) as f:
                saved = json.load(f)["config"]
            if not isinstance(saved, dict):
                raise TypeError("config is not an object")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise TrainError("--resume", f"{out} has no {CHECKPOINT} and its {CONFIG} is unreadable "
                             f"({type(error).__name__}); nothing to resume") from None
        check_same_run(saved, config, config_path)
    remove_stale_temporaries(out, RUN_FILES)
    return ckpt
