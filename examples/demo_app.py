"""An example app for ``ggmk boot`` (the app convention: ``app()`` returns (modules, options)).

    ggmk boot examples/demo_app.py
    ggmk emit WORK --count 1000 --meta0 249         # busy work; each emits 49 READINGs
    ggmk emit POINT --payload '{"x": 1.5, "n": 3, "tag": "cafe0001"}'
    ggmk emit BOOM                                    # a handler that raises: see `ggmk log`
    ggmk ps; ggmk top --once; ggmk chan ls; ggmk mod ls
    ggmk trace --level all --seconds 1 --perfetto trace.json
    ggmk halt

Channels: ``demo.readings`` (lossy, small): WORK emits ``meta0 % 50`` READINGs on it per task
and the ``sink`` module consumes them slowly, so a burst of WORK drops readings (CHAN_DROP
instants in the Perfetto trace).
"""
import time

import ggmk
from ggmk import OK

TYPES = """
[types.WORK]
id = 100
doc = "busy work: meta0 = loop length"

[types.READING]
id = 101

[types.POINT]
id = 102
payload = { x = "f64", n = "u32", tag = "bytes[4]" }

[types.BOOM]
id = 103
doc = "its handler raises"

[types.LOG_READING]
id = 104
"""

work = ggmk.Module("work", version="0.1.0")
readings = work.produces("demo.readings", "READING", mode="fanout", guarantee="lossy",
                         capacity=64)


@work.handler("WORK")
def do_work(ctx):
    n = int(ctx.task.meta0)
    acc = 0
    for i in range(min(n, 100_000)):
        acc += i * i
    for i in range(n % 50):
        ctx.emit(readings, meta0=i)
    return OK


@work.handler("POINT")
def point(ctx):
    return OK


@work.handler("BOOM")
def boom(ctx):
    raise RuntimeError("BOOM handler failed on purpose")


sink = ggmk.Module("sink", version="0.1.0")


@sink.handler("LOG_READING", batch=True, consumes="demo.readings", message="READING")
def log_reading(ctx, batch):
    time.sleep(0.0005)          # a slow consumer: bursts overflow the lossy channel
    return OK


def app():
    return [work, sink], {"types": ggmk.load_types(TYPES), "workers": 2}
