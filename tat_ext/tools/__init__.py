"""The user tools behind `tat-ext solve`, `verify`, `bench` and `profile`.

    solve     `tat-ext solve`: TReLU/TAT/DKS parameters for a plain chain, with their invariants
    cases     the kernel-vs-reference case grid and its tolerance rules (also used by the tests)
    verify    runs the grid on every device: pass/fail table, exit status, JSON
    bench     eager vs torch.compile vs tat_ext: activation sizes, a training step, fixed cost
    overhead  the fixed cost per call on tiny tensors (bench's overhead part)
    profile   torch.profiler traces and per-kernel tables, unfused vs fused
    workloads the models and training step that bench and profile time
    timing    timers with spread, peak memory, saved-for-backward bytes, kernel launches
    plots     the PNG figures of a bench run
    common    their usage error, dtype parsing, tables, the printed report (the rest: tat_ext.utils)
"""
