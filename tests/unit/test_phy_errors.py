"""Validation that happens before any device or address is touched.

Only invalid inputs are used here, so nothing is created in this namespace;
the kernel-facing paths are in tests/integration/test_tun_device.py.
"""

import pytest

from usertcp.phy import (
    DeviceError,
    InvalidAddress,
    InvalidMTU,
    InvalidName,
    TunDevice,
    configure_host_side,
    parse_host_address,
)
from usertcp.phy.errors import check_mtu


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


@pytest.mark.parametrize(
    "name", ["", "a" * 16, "utcp-name-too-long", "has space", "a/b", "a:b", ".", "..", "tun%d", 7]
)
def test_invalid_names_are_rejected_before_opening(name):
    with pytest.raises(InvalidName) as info:
        TunDevice(name)
    assert isinstance(info.value, DeviceError) and info.value.reason == "name-invalid"
    one_line(info.value)


def test_too_long_name_says_so():
    with pytest.raises(InvalidName, match="too long: at most 15"):
        TunDevice("a" * 16)


@pytest.mark.parametrize("mtu", [0, 67, 65536, -1, 1500.0, True, "1500"])
def test_invalid_mtu(mtu):
    with pytest.raises(InvalidMTU) as info:
        TunDevice("utcpbad0", mtu=mtu)
    assert "68 to 65535" in one_line(info.value)
    assert info.value.reason == "mtu-invalid"


@pytest.mark.parametrize("mtu", [68, 1500, 65535])
def test_valid_mtu(mtu):
    assert check_mtu(mtu) == mtu


@pytest.mark.parametrize(
    "text",
    [
        "10.7.0.1",  # no prefix
        "10.7.0.256/24",
        "10.7.0.1/33",
        "10.7.0.1/32",
        "10.7.0.1/0",
        "10.7.0.0/24",  # network address
        "10.7.0.255/24",  # broadcast address
        "127.0.0.1/8",
        "224.0.0.1/24",
        "fd00::/64",  # the subnet-router anycast address
        "fd00::1/128",
        "::1/64",
        "ff02::1/64",
        "::ffff:10.0.0.1/96",  # IPv4-mapped
        "",
        None,
        "10.7.0.1/24/3",
    ],
)
def test_malformed_addresses(text):
    with pytest.raises(InvalidAddress) as info:
        parse_host_address(text)
    one_line(info.value)
    assert info.value.reason == "address-invalid"


def test_configure_validates_before_touching_netlink():
    with pytest.raises(InvalidAddress):
        configure_host_side("utcpnosuch0", "10.7.0.1", 1500)
    with pytest.raises(InvalidMTU):
        configure_host_side("utcpnosuch0", "10.7.0.1/24", 10)
    with pytest.raises(InvalidAddress, match="below IPv6's minimum"):
        configure_host_side("utcpnosuch0", ["10.7.0.1/24", "fd00:7::1/64"], 1279)
    with pytest.raises(InvalidAddress, match="one host address per family"):
        configure_host_side("utcpnosuch0", ["10.7.0.1/24", "10.8.0.1/24"], 1500)


@pytest.mark.parametrize("text", ["10.7.0.1/24", "192.168.50.2/30", "10.0.0.1/31", " 10.7.0.1/24 ",
                                  "fd00:7::1/64", "2001:db8::2/127"])
def test_good_addresses(text):
    iface = parse_host_address(text)
    assert str(iface) == text.strip()
