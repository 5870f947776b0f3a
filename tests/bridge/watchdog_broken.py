"""A device module that imports in the test process but not in a device process: the child's
boot fails while unpickling it, so the parent must report the child's traceback."""
import multiprocessing

import ggmk.device as gd

if multiprocessing.parent_process() is not None:
    raise ImportError("watchdog_broken: broken in the device process (on purpose)")

gpu = gd.Module("wdbroken")


@gpu.handler("WD_ECHO")
def never_compiled(ctx, task):
    return 0
