"""benchmarks.profile_step's trace reading on hand-written traces in the profiler's JSON format."""

import gzip
import json

from benchmarks import profile_step

FAST_COMPILE = True  # compilation is most of this module's in-process time (conftest._fast_compile)


def write_trace(tmp_path, events):
    folder = tmp_path / "plugins" / "profile" / "run"
    folder.mkdir(parents=True)
    with gzip.open(folder / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    return str(tmp_path)


def process(pid, name):
    return {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}


def op(pid, name, dur, **args):
    return {"ph": "X", "pid": pid, "tid": 1, "name": name, "dur": dur, "args": args}


def test_cpu_trace_groups_xla_ops_and_skips_runtime_frames(tmp_path):
    trace = write_trace(tmp_path, [process(1, "/host:CPU"), op(1, "ynn_fusion.3", 30), op(1, "ynn_fusion.12", 20),
                                   op(1, "transpose_copy_fusion", 10), op(1, "ThunkExecutor::Execute", 500),
                                   op(1, "$python frame", 500), {"ph": "i", "pid": 1, "name": "ynn_fusion", "dur": 99}])
    assert profile_step.op_times(trace) == {"ynn_fusion": 50, "transpose_copy_fusion": 10}


def test_gpu_trace_counts_only_device_kernels_by_their_xla_op(tmp_path):
    trace = write_trace(tmp_path, [process(1, "/host:CPU"), process(7, "/device:GPU:0"),
                                   op(1, "PjRtStreamExecutorLoadedExecutable::Execute", 900),
                                   op(1, "loop_add_fusion", 900),
                                   op(7, "sm90_xmma_wgrad_implicit_gemm", 40, hlo_op="cudnn-conv-bw-filter.4"),
                                   op(7, "sm90_xmma_wgrad_implicit_gemm", 60, hlo_op="cudnn-conv-bw-filter.11"),
                                   op(7, "loop_add_fusion_2", 5)])
    assert profile_step.op_times(trace) == {"cudnn-conv-bw-filter": 100, "loop_add_fusion": 5}


def test_train_benchmark_builds_its_real_step_inputs(tmp_path):
    """What benchmarks.bench_train and profile_step time: a real Trainer's state and metric totals and
    one real CIFAR batch on the device (a shadowed module name once broke this on the GPU only)."""
    import jax
    import numpy as np

    from benchmarks import bench_train
    from hfcjax import steps

    trainer, state, totals, x, y = bench_train.step_inputs(8, "float32", 2, str(tmp_path / "run"))
    assert x.shape == (8, 32, 32, 3) and y.shape == (8,)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(totals), steps.zero_totals())
