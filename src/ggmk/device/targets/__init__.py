"""Device targets (``cpu``, ``sim``, ``cuda``): see each module. The host side opens one
*session* per kernel (``open_session(plan)``): its state allocators, compile step, launch and
``close`` after the kernel exited. ``cuda`` keeps per-kernel resources there (its non-blocking
stream, the deferred-cleanup scope); the others need none and use :class:`ModuleSession`."""


class ModuleSession:
    """A session for a target without per-kernel resources: the target module's functions."""

    def __init__(self, target, plan):
        self.target = target
        self.plan = plan

    def alloc_dev(self, image):
        return self.target.alloc_dev(image)

    def alloc_map(self, image):
        return self.target.alloc_map(image)

    def alloc_arena(self, nbytes):
        return self.target.alloc_arena(nbytes)

    def prepare(self, kernel, arrays, built=None):
        self.target.prepare(kernel, arrays, self.plan, built)

    def launch(self, kernel, arrays):
        return self.target.launch(kernel, arrays, self.plan)

    def close(self):
        pass
