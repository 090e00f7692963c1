"""The package's public submodules are reachable as attributes (tat_ext.init, like torch.nn.init),
imported on first use so that `import tat_ext` stays as light as before."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_submodules_are_attributes_imported_lazily():
    proc = _run("""
        import sys, warnings
        warnings.simplefilter("ignore")  # the fallback warning when the extension is not built
        import tat_ext
        lazy = ("activations", "cmaps", "data", "datasets", "diagnostics", "init", "models",
                "tools", "train", "transform")
        assert not [m for m in lazy if f"tat_ext.{m}" in sys.modules], sorted(sys.modules)
        assert "scipy" not in sys.modules
        assert set(lazy) <= set(dir(tat_ext)) and {"trelu", "reference", "nn"} <= set(dir(tat_ext))
        # Formerly AttributeError: module 'tat_ext' has no attribute 'init'.
        assert tat_ext.init.tat_init_ is sys.modules["tat_ext.init"].tat_init_
        assert tat_ext.transform.solve_trelu(49).slope > 0.42
        assert callable(tat_ext.data.per_location_normalization)
        assert callable(tat_ext.diagnostics.check_initialization)
        assert callable(tat_ext.cmaps.trelu_c_map) and callable(tat_ext.activations.get_activation)
        assert callable(tat_ext.models.vanilla_resnet) and callable(tat_ext.train.train)
        assert callable(tat_ext.datasets.digits) and tat_ext.tools.__name__ == "tat_ext.tools"
        from tat_ext import transform
        assert transform is tat_ext.transform
        assert callable(tat_ext.trelu) and callable(tat_ext.reference.trelu) and tat_ext.nn.TReLU
        try:
            tat_ext.nope
        except AttributeError as error:
            assert "has no attribute 'nope'" in str(error)
        else:
            raise AssertionError("tat_ext.nope did not raise")
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
