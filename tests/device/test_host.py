"""``ggmk.device.host``: the DeviceKernel's configuration (target defaults, the target's own
rules, user keys), its guards before start, and the record helpers. Nothing here compiles or
launches a kernel (the boot paths are covered by test_kernel_cpu and the workloads)."""
import numpy as np
import pytest

import ggmk.device as gd
from ggmk import task as taskmod
from ggmk.device import host, layout
from ggmk.device.targets import get_target
from ggmk.errors import BootError, DeviceError, KernelStopped

m = gd.Module("hosttest")


@m.handler(1)
def one(ctx, task):
    return 0


def test_target_defaults_and_overrides():
    k = gd.DeviceKernel([m], target="cpu")
    cpu = get_target("cpu")
    assert k.target is cpu and k.target_name == "cpu"
    assert k.config.blocks == cpu.DEFAULTS["blocks"] and k.config.batch == cpu.DEFAULTS["batch"]
    k = gd.DeviceKernel([m], target="cpu", workers=3, threads=64, batch=128)
    assert (k.config.blocks, k.config.threads, k.config.batch) == (3, 64, 128)


def test_the_targets_rules_apply_host_threads_default_clamped():
    k = gd.DeviceKernel([m], target="cpu", workers=1)
    assert k.config.host_threads == 1
    k = gd.DeviceKernel([m], target="cpu", workers=2, host_threads=2)
    assert k.config.host_threads == 2


def test_unknown_config_keys_and_targets():
    with pytest.raises(BootError, match=r"unknown config keys \['nope'\]"):
        gd.DeviceKernel([m], target="cpu", nope=1)
    with pytest.raises(BootError, match="not one of auto, cpu, sim, cuda"):
        gd.DeviceKernel([m], target="gpu")


def test_an_unusable_target_says_why():
    # the simulator is not switched on in this process
    with pytest.raises(gd.host.DeviceError, match="'sim' is not usable: .*NUMBA_ENABLE_CUDASIM"):
        gd.DeviceKernel([m], target="sim")


def test_plan_counts_handlers_and_channels():
    k = gd.DeviceKernel([m], target="cpu")
    assert k.plan.ntypes == 1 and k.plan.nchan == 0 and k.type_ids == [1]
    assert k.channels == {}
    with pytest.raises(KeyError, match="no device channel 'x'"):
        k.channel_id("x")


def test_calls_before_start_are_refused():
    k = gd.DeviceKernel([m], target="cpu")
    assert not k.alive() and "new" in repr(k)
    for call in (k.pull, k.heartbeats, k.metrics, k.tick, k.drain_trace, k.tx_held):
        with pytest.raises(KernelStopped, match="not started"):
            call()
    with pytest.raises(KernelStopped):
        k.push(taskmod.make(1, type=1))
    with pytest.raises(TypeError, match="TASK_DTYPE"):
        k.push(np.zeros(3, np.int64))
    k.stop()                                    # nothing to stop: no error


def test_error_code_reads_the_pad_as_int16():
    r = taskmod.make(2, type=1)
    r["_pad"] = [np.uint16(0xFFF9), 5]          # -7, 5
    assert host.error_code(r).tolist() == [-7, 5]
    assert host.SYS_ERROR == layout.CH_SYS_ERROR and host.SYS_DROPPED == layout.CH_SYS_DROPPED


class _Launch:
    """A stand-in for the remote kernel's launch (the view's liveness), edge of the unit."""
    error = None

    def alive(self):
        return True

    def wait(self, timeout):
        return False


def test_rx_unpublished_counts_records_taken_in_that_published_metrics_miss():
    """A view over the mapped words (as the device process's parent holds): records the device
    took from host.rx (C_RX_HEAD) are not in the published counters until a block publishes
    its row; until then the counters cannot say the device is idle."""
    k = gd.DeviceKernel([m], target="cpu", workers=2, view=True)
    nmap = layout.offsets(k.plan)["_total"][2]
    words = np.zeros(nmap, np.int64)
    k.attach(words, np.zeros(k.config.arena_bytes, np.uint8), _Launch())
    assert k.rx_unpublished() == 0
    ctl = k._h["ctl"]
    rows = k._h["mpub"].reshape(k.config.blocks, k.plan.nmet)
    col = layout.METRIC_NAMES.index("rx_in")
    ctl[layout.C_RX_TAIL] = ctl[layout.C_RX_HEAD] = 5      # pushed 5, the device took them
    assert k.rx_pending() == 0 and k.rx_unpublished() == 5
    rows[0, col] = 3                                       # block 0 published 3 of them
    assert k.rx_unpublished() == 2
    rows[1, col] = 2
    assert k.rx_unpublished() == 0


def _view(launch, **cfg):
    """A host view over zeroed mapped words (nothing compiles, nothing runs)."""
    k = gd.DeviceKernel([m], target="cpu", view=True, **cfg)
    words = np.zeros(layout.offsets(k.plan)["_total"][2], np.int64)
    return k.attach(words, np.zeros(k.config.arena_bytes, np.uint8), launch)


class _Failed(_Launch):
    """A kernel whose host thread raised while the rest of it still runs."""
    error = ValueError("boom in the kernel")


def test_a_failed_kernel_is_not_alive_and_host_calls_name_the_failure():
    """Once the kernel failed (Launch.error set), alive() says so at once, and push / an
    empty pull / pull_until raise naming the error instead of queueing into, or waiting on,
    a kernel that will never answer."""
    k = _view(_Failed())
    assert not k.alive()
    with pytest.raises(DeviceError, match=r"push: the device kernel \(cpu\) failed: "
                                          r"ValueError\('boom in the kernel'\)"):
        k.push(taskmod.make(1, type=1))
    with pytest.raises(DeviceError, match=r"pull: the device kernel \(cpu\) failed: Value"):
        k.pull()
    with pytest.raises(DeviceError, match=r"pull_until: 0/1 records when the device kernel "
                                          r"\(cpu\) failed: ValueError\('boom in the kernel'\)$"):
        k.pull_until(1, timeout=30)
    # a record published before the failure still comes back (the error once there is none)
    k._h["tx"][:layout.W] = taskmod.make(1, type=5, meta0=7).view(np.int64)
    k._h["txseq"][0] = 1
    assert k.pull()["meta0"].tolist() == [7]


def test_bad_push_and_pull_arguments_are_named():
    k = _view(_Launch())
    recs = taskmod.make(4, type=1)
    for bad, what in ((np.zeros(3, np.int64), "an array of dtype int64"),
                      (recs.reshape(2, 2), r"a 2-D array of shape \(2, 2\)"),
                      (recs[:1].reshape(()), r"a 0-D array of shape \(\)"),
                      ([1, 2], "list")):
        with pytest.raises(TypeError, match=r"push: records must be a 1-D TASK_DTYPE array "
                                            rf"\(ggmk.task.make\), got {what}$"):
            k.push(bad)
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(ValueError, match=rf"pull: max_records={bad!r}: allowed an int >= 0"):
            k.pull(bad)
    assert len(k.pull(None)) == 0 and len(k.pull(0)) == 0
    with pytest.raises(ValueError, match=r"pull_until: count=-3: allowed an int >= 0"):
        k.pull_until(-3)
    with pytest.raises(ValueError, match=r"pull_until: timeout=-1: allowed a number of sec"):
        k.pull_until(1, timeout=-1)


class _Exits(_Launch):
    def wait(self, timeout):
        return True


def test_a_stopped_kernel_does_not_start_again():
    k = _view(_Exits())
    k.stop()
    assert not k.alive()
    with pytest.raises(BootError, match="this kernel was stopped, and a stopped kernel does "
                                        "not start again: make a new DeviceKernel"):
        k.start()
    with pytest.raises(KernelStopped, match="push: the kernel is stopped"):
        k.push(taskmod.make(1, type=1))
