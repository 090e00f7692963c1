"""`tat-ext profile` end to end on the CPU: traces, the per-kernel and per-category tables."""
import json

import pytest

from tat_ext import _extension
from tat_ext.cli import main
from tat_ext.tools.profile import categorize

pytestmark = [pytest.mark.skipif(not _extension.AVAILABLE, reason="extension not built"),
              pytest.mark.usefixtures("restore_threads")]
DEPTH = 13




def test_traces_and_summary_for_unfused_and_fused(tmp_path, capsys):
    out = tmp_path / "prof"
    assert main(["profile", "--depth", str(DEPTH), "--width", "4", "--resolution", "4",
                 "--batch", "2", "--steps", "2", "--warmup", "1", "--threads", "1",
                 "--top", "100", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for text in ("## eager:", "## fused:", "calls/step", "% of step", "## per category",
                 "activation: eager"):
        assert text in printed
    assert "tat_ext::" in printed and "aten::leaky_relu" in printed  # every kernel is listed

    for variant in ("eager", "fused"):
        trace = json.loads((out / f"trace_{variant}.json").read_text())
        names = {e.get("name") for e in trace["traceEvents"]}
        assert "train_step_0" in names and "train_step_1" in names

    doc = json.loads((out / "profile.json").read_text())
    assert doc["steps"] == 2 and doc["model"]["depth"] == DEPTH
    eager, fused = doc["variants"]["eager"], doc["variants"]["fused"]
    for v in (eager, fused):
        assert v["step_ms"] > 0 and v["kernels"]
        assert set(v["categories"]) == {"activation", "optimizer", "loss", "conv/matmul", "other"}
        assert all(k["self_us"] >= 0 and k["calls"] >= 1 for k in v["kernels"])
    # What fusion removes: leaky_relu and the scale multiply, forward and backward, per layer,
    # become one fused call forward and one backward.
    assert eager["categories"]["activation"]["calls_per_step"] == 4 * DEPTH
    assert fused["categories"]["activation"]["calls_per_step"] == 2 * DEPTH
    assert eager["categories"]["conv/matmul"]["calls_per_step"] == \
        fused["categories"]["conv/matmul"]["calls_per_step"]
    saved = (out / "profile.txt").read_text()
    assert "## per category" in saved and "activation: eager" in saved


@pytest.mark.parametrize("name, category", [
    ("aten::leaky_relu_backward", "activation"),
    ("tat_ext::trelu_backward", "activation"),
    ("void tat_ext::cuda::(anonymous namespace)::reduce_channel_partials<float>(...)", "activation"),
    ("triton_poi_fused_leaky_relu_mul_0", "activation"),
    ("aten::mul", "activation"),
    ("aten::mul_", "other"),
    ("aten::_foreach_add_", "optimizer"),
    ("aten::mkldnn_convolution", "conv/matmul"),
    ("sm90_xmma_fprop_implicit_gemm_f32f32", "conv/matmul"),
    ("aten::_log_softmax", "loss"),
    ("aten::empty", "other"),
])
def test_kernel_names_are_put_in_the_right_category(name, category):
    assert categorize(name) == category
