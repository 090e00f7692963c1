"""What the `tat-ext verify/bench/profile` tools share: user-input errors, device parsing, output
files written atomically, plain-text tables and a description of the machine."""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from typing import Any, Iterable, List, Optional, Sequence

import torch

__all__ = ["UsageError", "resolve_device", "cuda_devices", "prepare_output_dir",
           "check_writable_file", "write_atomic", "write_json_atomic", "format_table",
           "environment", "describe_device", "set_threads", "require_extension",
           "human_count", "progress_bar", "say", "Report", "DTYPE_NAMES", "parse_dtype"]


class UsageError(ValueError):
    """A user mistake (bad option value, missing GPU, too little memory, unwritable path).

    The command line prints it as one line naming `argument` and exits with status 2.
    """

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"argument {argument}: {message}")
        self.argument = argument


DTYPE_NAMES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
               "bfloat16": torch.bfloat16}


def parse_dtype(name: str, argument: str = "--dtype") -> torch.dtype:
    try:
        return DTYPE_NAMES[name]
    except KeyError:
        raise UsageError(argument, f"unknown dtype {name!r}; one of {', '.join(DTYPE_NAMES)}") from None


def cuda_devices() -> List[torch.device]:
    """Every visible CUDA device (none when torch has no CUDA or no GPU is present)."""
    if not torch.cuda.is_available():
        return []
    return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]


def resolve_device(text: str, argument: str = "--device") -> torch.device:
    """'cpu', 'cuda' (the current CUDA device) or 'cuda:N', checked against what is present."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(argument, f"unknown device {text!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise UsageError(argument, f"unsupported device {text!r}; use cpu, cuda or cuda:N")
    present = cuda_devices()
    if not present:
        raise UsageError(argument, f"{text!r} requested but no CUDA device is available "
                                   f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= len(present):
        raise UsageError(argument, f"{text!r}: only {len(present)} CUDA device(s) present")
    return torch.device("cuda", index)


def prepare_output_dir(path: str, argument: str = "--out") -> str:
    """Create `path` if needed and prove it writable now, before any long work starts."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UsageError(argument, f"cannot write to {path!r}: {error.strerror or error}") from None
    return os.path.abspath(path)


def check_writable_file(path: str, argument: str) -> str:
    """The file's folder must exist and be writable (the file itself is written atomically later)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(argument, f"{path!r} is a directory, expected a file path")
    if not os.path.isdir(folder):
        raise UsageError(argument, f"cannot write {path!r}: folder {folder!r} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UsageError(argument, f"cannot write {path!r}: {error.strerror or error}") from None
    return os.path.abspath(path)


def write_atomic(path: str, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`: readers see the old
    file or the new one, never a half-written one (a benchmark may be killed at any moment)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str, payload: Any) -> None:
    write_atomic(path, (json.dumps(payload, indent=1, allow_nan=True) + "\n").encode())


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                 right: Optional[Sequence[bool]] = None) -> str:
    """A fixed-width text table; numbers are expected pre-formatted as strings."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    right = right or [False] * len(headers)

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


class _NoBar:
    """Stands in for a tqdm bar when tqdm is not installed (e.g. an offline GPU machine)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm progress bar on stderr, shown only on a terminal (and never when not `enabled`);
    a silent stand-in where tqdm is missing. Use as a context manager."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, mininterval=0.5,
                disable=None if enabled else True)


def say(line: str = "") -> None:
    """Print a report line without breaking a progress bar that is being drawn."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(line, flush=True)
        return
    tqdm.write(line)


class Report:
    """The printed report of a tool run, kept to be saved as a text file next to its results."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        say(line)

    def save(self, path: str) -> None:
        write_atomic(path, ("\n".join(self.lines) + "\n").encode())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(devices: Sequence[torch.device] = ()) -> dict:
    """Versions and hardware, recorded with every result so numbers can be traced to a machine."""
    import tat_ext
    from tat_ext import _extension

    info = {
        "tat_ext": tat_ext.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "extension_built": _extension.AVAILABLE,
        "extension_with_cuda": _extension.WITH_CUDA,
    }
    gpus = [d for d in devices if d.type == "cuda"]
    if gpus:
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(d) for d in gpus]
    return info


def require_extension(device: torch.device, argument: str = "--device") -> None:
    """Timing "fused" without the compiled kernels would time the pure-PyTorch fallback."""
    from tat_ext import _extension

    if not _extension.AVAILABLE:
        raise UsageError(argument, f"the compiled extension tat_ext._C is not available "
                                   f"({_extension.LOAD_ERROR}); build it first (README.md)")
    if device.type == "cuda" and not _extension.WITH_CUDA:
        raise UsageError(argument, "tat_ext._C was built without CUDA kernels; rebuild with "
                                   "nvcc present (TAT_EXT_CUDA=1)")


def human_count(n: int) -> str:
    """2048 -> '2K', 3 * 2**20 -> '3M'; other numbers as they are."""
    for suffix, unit in (("G", 2 ** 30), ("M", 2 ** 20), ("K", 2 ** 10)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def set_threads(threads: Optional[int], argument: str = "--threads") -> None:
    """torch.set_num_threads for the CPU work of a tool run (None: leave torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError(argument, f"must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({_cpu_model()}, {threads} thread{'s' if threads != 1 else ''})"
