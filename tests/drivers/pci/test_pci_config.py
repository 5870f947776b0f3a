"""ggmk.drivers.pci.config: config bytes captured from this machine's devices, short reads,
malformed config spaces (the error names the offset, never hangs) and hypothesis-generated
corrupt config spaces."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ggmk.drivers import pci
from ggmk.drivers.pci import PciParseError, parse_config
from ggmk.errors import GgmkError

from pci_helpers import SYSFS, fixture_config, _mutated


# ---------------------------------------------------------------------------------------------
# Fixtures captured from real devices
# ---------------------------------------------------------------------------------------------
def test_captured_virtio_block_decodes_exactly():
    cs = parse_config(fixture_config("0000:00:02.0"))
    assert (cs.vendor, cs.device, cs.class_code, cs.revision) == (0x1AF4, 0x1042, 0x018000, 1)
    assert (cs.subsystem_vendor, cs.subsystem_device) == (0x1AF4, 0x1042)
    assert cs.header_type == 0 and not cs.multifunction
    assert cs.bars == (pci.Bar(index=0, kind="mem", address=0x40_0008_0000, is_64bit=True,
                               prefetchable=False, register_offset=0x10),)
    assert [(c.offset, c.id) for c in cs.capabilities] == [
        (0x40, 0x09), (0x50, 0x09), (0x60, 0x09), (0x70, 0x09), (0x84, 0x09), (0x98, 0x11)]
    assert cs.capabilities_complete and cs.ext_capabilities == () and cs.notes == ()

    v = cs.virtio
    assert (v.device_type, v.type_name, v.transitional, v.modern) == (2, "block", False, True)
    assert (v.common.bar, v.common.offset, v.common.length) == (0, 0x0000, 0x38)
    assert (v.isr.bar, v.isr.offset, v.isr.length) == (0, 0x2000, 1)
    assert (v.device_cfg.bar, v.device_cfg.offset, v.device_cfg.length) == (0, 0x4000, 0x1000)
    assert (v.notify.bar, v.notify.offset, v.notify.length) == (0, 0x6000, 0x1000)
    assert v.notify.notify_off_multiplier == 4 and v.common.notify_off_multiplier is None
    assert (v.pci_cfg.cap_offset, v.pci_cfg.cfg_type, v.pci_cfg.bar) == (0x84, 5, 0)

    assert cs.msix == pci.MsiX(enabled=True, function_mask=False, table_size=2, table_bar=0,
                               table_offset=0x8000, pba_bar=0, pba_offset=0x48000)
    assert cs.msi is None and cs.pcie is None and cs.pm is None


VIRTIO_FIXTURES = {
    "0000:00:01.0": ("balloon", 5, 5),
    "0000:00:02.0": ("block", 2, 2),
    "0000:00:03.0": ("net", 1, 3),
    "0000:00:04.0": ("vsock", 19, 4),
    "0000:00:05.0": ("entropy", 4, 2),
}


@pytest.mark.parametrize("addr", sorted(VIRTIO_FIXTURES))
def test_captured_virtio_functions(addr):
    type_name, dtype, msix_size = VIRTIO_FIXTURES[addr]
    cs = parse_config(fixture_config(addr))
    assert cs.virtio.type_name == type_name and cs.virtio.device_type == dtype
    assert cs.device == 0x1040 + dtype
    assert [c.cfg_name for c in cs.virtio.caps] == ["common", "isr", "device", "notify", "pci-cfg"]
    assert cs.msix.table_size == msix_size
    # the kernel allocated one vector per table entry (msi_irqs captured with the config)
    assert len(SYSFS[addr]["msi_irqs"]) == msix_size


def test_captured_host_bridge_has_no_capabilities_and_empty_extended_space():
    raw = fixture_config("0000:00:00.0")
    assert len(raw) == 4096
    cs = parse_config(raw)
    assert (cs.vendor, cs.device, cs.class_code) == (0x8086, 0x0D57, 0x060000)
    assert cs.capabilities == () and cs.ext_capabilities == ()
    assert cs.capabilities_complete and cs.bars == ()
    fn = pci.PciFunction.from_config(raw, "0000:00:00.0")
    assert fn.name == "Intel Host bridge" and not fn.is_virtio and not fn.is_nvidia_gpu


# ---------------------------------------------------------------------------------------------
# Short reads (unprivileged sysfs reads give 64 bytes)
# ---------------------------------------------------------------------------------------------
def test_64_byte_read_skips_the_walk_and_says_so():
    cs = parse_config(fixture_config("0000:00:03.0")[:64])
    assert cs.capabilities == () and not cs.capabilities_complete
    assert any("64 bytes" in n and "not walked" in n for n in cs.notes)
    # the header still gives ids, BAR type bits and the virtio type
    assert cs.bars[0].is_64bit and cs.virtio.type_name == "net" and cs.virtio.caps == ()


def test_partial_read_stops_at_the_last_readable_capability():
    cs = parse_config(fixture_config("0000:00:02.0")[:0x60])
    assert [c.offset for c in cs.capabilities] == [0x40, 0x50]
    assert not cs.capabilities_complete
    assert any("0x60" in n for n in cs.notes)


@pytest.mark.parametrize("length", range(64, 257, 4))
def test_every_truncation_is_a_prefix_of_the_full_decode(length):
    full = parse_config(fixture_config("0000:00:01.0"))
    cs = parse_config(fixture_config("0000:00:01.0")[:length])
    got = [c.offset for c in cs.capabilities]
    assert got == [c.offset for c in full.capabilities][: len(got)]
    # complete once the last structure (MSI-X at 0x98, 12 bytes) is readable: the rest is zeros
    assert cs.capabilities_complete == (length >= 0x98 + 12)
    decoded = [c for c in cs.capabilities if c.decoded is not None]
    assert all(c == f for c, f in zip(decoded, full.capabilities) if c.offset == f.offset)


# ---------------------------------------------------------------------------------------------
# Malformed config spaces: error names the offset, never hangs
# ---------------------------------------------------------------------------------------------
def _expect_error(raw, offset: int, *words: str) -> PciParseError:
    with pytest.raises(PciParseError) as info:
        parse_config(bytes(raw))
    err = info.value
    assert isinstance(err, GgmkError)
    assert err.offset == offset, str(err)
    assert f"{offset:#x}" in str(err), str(err)
    for word in words:
        assert word in str(err), str(err)
    return err


def test_pointer_into_header_is_an_error_naming_the_pointer():
    _expect_error(_mutated("0000:00:02.0", o34=0x20), 0x34, "0x20", "header")
    # a pointer further down the chain (next of the cap at 0x70 lives at 0x71)
    _expect_error(_mutated("0000:00:02.0", o71=0x3C), 0x71, "0x3c")


def test_loop_is_an_error_naming_the_pointer():
    _expect_error(_mutated("0000:00:02.0", o99=0x40), 0x99, "loops", "0x40")
    _expect_error(_mutated("0000:00:02.0", o41=0x40), 0x41, "loops")  # self loop


def test_structure_past_config_space_is_an_error():
    raw = _mutated("0000:00:02.0", o99=0xFC, oFC=0x11, oFD=0x00)  # MSI-X needs 12 bytes at 0xfc
    _expect_error(raw, 0xFC, "MSI-X", "runs past")
    raw = _mutated("0000:00:02.0", o72=0xF0)  # virtio cap at 0x70 claims 240 bytes
    _expect_error(raw, 0x70, "cap_len")


def test_short_virtio_capability_is_an_error():
    _expect_error(_mutated("0000:00:02.0", o42=8), 0x40, "cap_len 8")
    _expect_error(_mutated("0000:00:02.0", o72=16), 0x70, "notify")  # notify needs 20


def test_header_errors():
    _expect_error(b"\x00" * 63, 63, "64-byte header")
    _expect_error(b"\xff" * 256, 0x00, "0xffff")
    _expect_error(_mutated("0000:00:02.0", oE=0x05), 0xE, "layout")
    raw = _mutated("0000:00:02.0", o24=0x04)  # BAR5 claims 64-bit: no upper half
    _expect_error(raw, 0x24, "BAR5")


def _ext_space(chain: list[tuple[int, int, int]]) -> bytearray:
    """Host-bridge fixture (4096 bytes) with an extended capability chain written into it."""
    raw = bytearray(fixture_config("0000:00:00.0"))
    for off, cap_id, nxt in chain:
        struct.pack_into("<I", raw, off, cap_id | (1 << 16) | (nxt << 20))
    return raw


def test_extended_capabilities_walk_and_decode():
    raw = _ext_space([(0x100, 0x0001, 0x148), (0x148, 0x0003, 0x158), (0x158, 0x000B, 0)])
    struct.pack_into("<Q", raw, 0x14C, 0x0123456789ABCDEF)
    struct.pack_into("<I", raw, 0x15C, 0x0001 | (1 << 16) | (0x18 << 20))
    cs = parse_config(bytes(raw))
    assert [(c.offset, c.id, c.name) for c in cs.ext_capabilities] == [
        (0x100, 1, "Advanced Error Reporting"), (0x148, 3, "Device Serial Number"),
        (0x158, 0xB, "Vendor Specific Extended")]
    assert cs.ext_capabilities[1].decoded == {"serial": 0x0123456789ABCDEF}
    assert cs.ext_capabilities[2].decoded == {"vsec_id": 1, "vsec_rev": 1, "vsec_length": 0x18}
    assert cs.ext_capability(3).version == 1 and cs.capabilities_complete
    # a short read of extended space stops, incomplete, without error
    cs = parse_config(bytes(raw[:0x150]))
    assert [c.offset for c in cs.ext_capabilities] == [0x100, 0x148]
    assert not cs.capabilities_complete


def test_extended_capability_errors():
    _expect_error(_ext_space([(0x100, 1, 0x200), (0x200, 2, 0x100)]), 0x200, "loops")
    _expect_error(_ext_space([(0x100, 1, 0x0FC)]), 0x100, "0xfc", "below")


# ---------------------------------------------------------------------------------------------
# Hypothesis: corrupt config spaces parse or raise PciParseError, and never hang
# ---------------------------------------------------------------------------------------------
HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IDS = [(0x1234, 0x5678), (0x1AF4, 0x1050), (0x10DE, 0x2335)]
PLAIN_CAP_IDS = [0x03, 0x04, 0x06, 0x07, 0x0D, 0x12, 0x13, 0x14]  # ids this module never decodes


def _check_invariants(cs: pci.ConfigSpace) -> None:
    offs = [c.offset for c in cs.capabilities]
    assert len(set(offs)) == len(offs) <= pci.MAX_CAPABILITIES
    assert all(0x40 <= o <= 0xFC and o % 4 == 0 for o in offs)
    ext = [c.offset for c in cs.ext_capabilities]
    assert len(set(ext)) == len(ext) and all(0x100 <= o <= 0xFFC for o in ext)


def _parse_or_error(raw: bytes) -> None:
    try:
        cs = parse_config(raw)
    except PciParseError as exc:
        assert exc.offset is None or 0 <= exc.offset <= 0x1000
        return
    _check_invariants(cs)


@pytest.mark.timeout(120)
@HYP
@given(st.binary(min_size=0, max_size=4096))
def test_random_bytes_parse_or_raise(raw):
    _parse_or_error(raw)


@pytest.mark.timeout(120)
@HYP
@given(ids_=st.sampled_from(IDS), length=st.sampled_from([64, 72, 128, 256, 300, 4096]),
       layout=st.sampled_from([0x00, 0x01, 0x02, 0x80]), cap_ptr=st.integers(0, 255),
       header=st.binary(min_size=64, max_size=64), data=st.data())
def test_valid_header_random_capability_bytes(ids_, length, layout, cap_ptr, header, data):
    body = data.draw(st.binary(min_size=length - 64, max_size=length - 64))
    raw = bytearray(header) + bytearray(body)
    struct.pack_into("<HHHH", raw, 0, ids_[0], ids_[1], 0, 0x10)
    raw[0x0E] = layout
    raw[0x34] = raw[0x14] = cap_ptr  # 0x14 is the CardBus (layout 2) capability pointer
    _parse_or_error(bytes(raw))


chains = st.lists(st.integers(0x10, 0x3F).map(lambda x: x * 4), unique=True, min_size=1,
                  max_size=48)


def _write_chain(raw: bytearray, chain: list[int], cap_ids: list[int], last_next: int) -> None:
    raw[0x34] = chain[0]
    for i, off in enumerate(chain):
        raw[off] = cap_ids[i]
        raw[off + 1] = chain[i + 1] if i + 1 < len(chain) else last_next


@pytest.mark.timeout(120)
@HYP
@given(chain=chains, data=st.data())
def test_random_valid_chain_round_trips(chain, data):
    raw = bytearray(64) + bytearray(data.draw(st.binary(min_size=192, max_size=192)))
    struct.pack_into("<HHHH", raw, 0, 0x1234, 0x5678, 0, 0x10)
    raw[0x0E] = 0
    raw[0x10:0x28] = bytes(24)  # keep the BARs plain: this test is about the chain
    cap_ids = data.draw(st.lists(st.sampled_from(PLAIN_CAP_IDS), min_size=len(chain),
                                 max_size=len(chain)))
    _write_chain(raw, chain, cap_ids, 0)
    cs = parse_config(bytes(raw))
    assert [(c.offset, c.id) for c in cs.capabilities] == list(zip(chain, cap_ids))
    assert cs.capabilities_complete


@pytest.mark.timeout(120)
@HYP
@given(chain=chains, data=st.data())
def test_random_looping_chain_raises_with_the_offset(chain, data):
    raw = bytearray(256)
    struct.pack_into("<HHHH", raw, 0, 0x1234, 0x5678, 0, 0x10)
    back = data.draw(st.sampled_from(chain))
    _write_chain(raw, chain, [0x03] * len(chain), back)
    with pytest.raises(PciParseError, match="loops") as info:
        parse_config(bytes(raw))
    assert info.value.offset == chain[-1] + 1
    assert f"{chain[-1] + 1:#x}" in str(info.value)


ext_chains = st.lists(st.integers(0x41, 0x3FF).map(lambda x: x * 4), unique=True, max_size=40)
PLAIN_EXT_IDS = [0x0001, 0x0002, 0x0004, 0x000D, 0x000E, 0x0015, 0x0018]


@pytest.mark.timeout(120)
@HYP
@given(rest=ext_chains, loop=st.booleans(), data=st.data())
def test_random_extended_chains(rest, loop, data):
    chain = [0x100] + rest
    raw = bytearray(4096)
    struct.pack_into("<HHHH", raw, 0, 0x1234, 0x5678, 0, 0)
    cap_ids = data.draw(st.lists(st.sampled_from(PLAIN_EXT_IDS), min_size=len(chain),
                                 max_size=len(chain)))
    last_next = data.draw(st.sampled_from(chain)) if loop else 0
    for i, off in enumerate(chain):
        nxt = chain[i + 1] if i + 1 < len(chain) else last_next
        struct.pack_into("<I", raw, off, cap_ids[i] | (1 << 16) | (nxt << 20))
    if loop:
        with pytest.raises(PciParseError, match="loops") as info:
            parse_config(bytes(raw))
        assert info.value.offset == chain[-1]
    else:
        cs = parse_config(bytes(raw))
        assert [(c.offset, c.id) for c in cs.ext_capabilities] == list(zip(chain, cap_ids))
