"""Error codes of the bridge (in the int16 ``_pad`` of a dead letter, like every other code).

* ``BRIDGE_TRANSFER_FAILED``: a batch transfer failed ``max_retries`` times in a row; the
  batch's records are on ``sys.error`` with this code.
* ``BRIDGE_PAYLOAD_TOO_LARGE``: a payload larger than the receiving kernel's largest block
  (device: 128 KiB; CPU: its arena's largest bin); on ``sys.error``, nothing was copied.
* ``BRIDGE_DEVICE_STOPPED``: the GPU kernel stopped (halt, or it died) while a record was on
  its way; on ``sys.error``.
"""
from ggmk import task as T

BRIDGE_TRANSFER_FAILED = -400
BRIDGE_PAYLOAD_TOO_LARGE = -401
BRIDGE_DEVICE_STOPPED = -402

for _c, _n in ((BRIDGE_TRANSFER_FAILED, "BRIDGE_TRANSFER_FAILED"),
               (BRIDGE_PAYLOAD_TOO_LARGE, "BRIDGE_PAYLOAD_TOO_LARGE"),
               (BRIDGE_DEVICE_STOPPED, "BRIDGE_DEVICE_STOPPED")):
    T.CODE_NAMES.setdefault(_c, _n)

__all__ = ["BRIDGE_TRANSFER_FAILED", "BRIDGE_PAYLOAD_TOO_LARGE", "BRIDGE_DEVICE_STOPPED"]
