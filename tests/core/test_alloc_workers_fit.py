"""An arena too small for the workers boot asks of it (each worker's bump region is split off
the arena's bump area: under 16 bytes each, tens of thousands of workers in a 4 MiB arena) or
below the minimum size: boot raised a raw ValueError out of ``Arena.worker_bump`` / ``Arena``
naming neither boot option. Now a BootError (still a ValueError to a direct caller) naming
``workers`` and ``arena_size``, their values and what fits."""
import pytest

from ggmk.core.alloc import MIN_SIZE, Arena
from ggmk.core.kernel import boot
from ggmk.errors import BootError

# the workers' half of a MIN_SIZE arena's bump area (the shared region keeps the rest)
_BUMP = Arena(MIN_SIZE).bump_size
FIT = _BUMP - (_BUMP // 2 & ~15)


def test_boot_with_more_workers_than_the_arena_fits_names_both():
    n = FIT // 16 + 1
    with pytest.raises(BootError) as ei:
        boot([], workers=n, arena_size=MIN_SIZE)
    msg = str(ei.value)
    assert f"workers={n}" in msg and f"arena_size={MIN_SIZE}" in msg, msg
    assert f"at most {FIT // 16}" in msg, msg           # what fits this arena
    need = int(msg.rsplit("arena_size=", 1)[1].split()[0])
    assert need > MIN_SIZE and need % 64 == 0, msg     # ... and the arena these workers need
    Arena(need).worker_bump(n - 1, n)                  # which is enough
    with pytest.raises(BootError):
        Arena(need - 64).worker_bump(0, n)             # and the smallest that is


def test_worker_bump_still_a_value_error_to_a_direct_caller():
    a = Arena(MIN_SIZE)
    assert a.worker_bump(FIT // 16 - 1, FIT // 16).size == 16        # the most that fit
    with pytest.raises(ValueError, match=f"workers={FIT // 16 + 1} do not fit"):
        Arena(MIN_SIZE).worker_bump(0, FIT // 16 + 1)


def test_boot_with_an_arena_below_the_minimum_is_a_boot_error():
    with pytest.raises(BootError, match=f"Arena size {MIN_SIZE - 64} .*arena_size.* "
                                        f"minimum {MIN_SIZE}"):
        boot([], workers=1, arena_size=MIN_SIZE - 64)
    with pytest.raises(ValueError):                    # Arena's own callers: as before
        Arena(MIN_SIZE - 64)


@pytest.mark.parametrize("bad", ["64M", 2.0**26, True, -1, None])
def test_boot_names_a_bad_arena_size(bad):
    with pytest.raises(BootError, match=r"arena_size=.*: allowed an int >= 1"):
        boot([], workers=1, arena_size=bad)


def test_too_many_workers_fail_before_the_kernel_is_built(monkeypatch):
    """Said at the arena, not in worker 0's context after the metrics, tracer and scheduler
    were made for every worker (~2 s at 26k workers)."""
    import ggmk.core.kernel as K
    made = []
    monkeypatch.setattr(K, "Metrics", lambda *a, **kw: made.append(1))
    with pytest.raises(BootError, match="do not fit arena_size"):
        boot([], workers=FIT // 16 + 1, arena_size=MIN_SIZE)
    assert made == []
