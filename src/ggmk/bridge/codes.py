"""Error codes of the bridge (in the int16 ``_pad`` of a dead letter), defined in ggmk.task
with every other code and re-exported here.

* ``BRIDGE_TRANSFER_FAILED``: a batch transfer failed ``max_retries`` times in a row; the
  batch's records are on ``sys.error`` with this code.
* ``BRIDGE_PAYLOAD_TOO_LARGE``: a payload larger than the receiving kernel's largest block
  (device: 128 KiB; CPU: its arena's largest bin); on ``sys.error``, nothing was copied.
* ``BRIDGE_DEVICE_STOPPED``: the GPU kernel stopped (halt, or it died) while a record was on
  its way; on ``sys.error``.
* ``BRIDGE_RESET``: the GPU kernel was reset (the watchdog, ``DualSystem.reset_device``) while
  the record was inside it (unfinished) or staged with a payload in its arena; on
  ``sys.error`` (see ``Bridge.reset_device``).
"""
from ggmk.task import (BRIDGE_DEVICE_STOPPED, BRIDGE_PAYLOAD_TOO_LARGE,  # noqa: F401 (defined
                       BRIDGE_RESET, BRIDGE_TRANSFER_FAILED)            # with every code)

__all__ = ["BRIDGE_TRANSFER_FAILED", "BRIDGE_PAYLOAD_TOO_LARGE", "BRIDGE_DEVICE_STOPPED",
           "BRIDGE_RESET"]
