"""scripts/setup_env.sh hands a user-set torch package index (TAT_EXT_TORCH_INDEX_URL) to pip, and
leaves the default index alone otherwise. pip is a stub here (only the default index is reachable):
a fake venv whose python records its arguments."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_env(tmp_path, **env):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.txt"
    stub = venv / "bin" / "python"
    stub.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    stub.chmod(0o755)
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "setup_env.sh")], capture_output=True, text=True,
                          env={**os.environ, "TAT_EXT_VENV": str(venv), **env}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return log.read_text().splitlines()


def test_torch_index_url_reaches_pip(tmp_path):
    calls = _setup_env(tmp_path, TAT_EXT_TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu")
    torch_calls = [c for c in calls if "--index-url" in c]
    assert len(torch_calls) == 1, calls
    words = torch_calls[0].split()
    assert words[words.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert "torch>=2.4" in words and any(w.startswith("torchvision==") for w in words)
    # The torch install comes before the rest of requirements.txt, so that one finds torch satisfied.
    requirements = next(i for i, c in enumerate(calls) if "-r requirements.txt" in c)
    assert calls.index(torch_calls[0]) < requirements


def test_default_index_unchanged(tmp_path):
    calls = _setup_env(tmp_path, TAT_EXT_TORCH_INDEX_URL="")
    assert calls and not [c for c in calls if "index-url" in c], calls
    assert any("-r requirements.txt" in c for c in calls)
