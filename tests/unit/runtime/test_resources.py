"""node.runtime.resources: the host's capacity and free resources, as integers for gossip."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.runtime import resources
from node.runtime.resources import (
    WIRE_LIMIT,
    HostResources,
    InvalidResources,
    ResourceMonitor,
    count_gpus,
    parse_meminfo,
)

MEMINFO = """\
MemTotal:       24683664 kB
MemFree:        23556560 kB
MemAvailable:   24196456 kB
Buffers:            9328 kB
Cached:           779388 kB
SwapTotal:             0 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

GOOD = HostResources(
    cpu_millicores_total=8000, cpu_millicores_free=6500,
    memory_bytes_total=32 << 30, memory_bytes_free=20 << 30,
    storage_bytes_total=1 << 40, storage_bytes_free=1 << 39,
    gpus_total=2, gpus_free=1,
)


# --- sampling this machine --------------------------------------------------------------


def test_sampling_this_host_gives_sane_figures(tmp_path: Path) -> None:
    sample = ResourceMonitor(tmp_path).sample()
    assert sample.cpu_millicores_total > 0
    assert sample.cpu_millicores_total % 1000 == 0
    assert 0 <= sample.cpu_millicores_free <= sample.cpu_millicores_total
    assert sample.memory_bytes_total > 0
    assert 0 <= sample.memory_bytes_free <= sample.memory_bytes_total
    assert sample.storage_bytes_total > 0
    assert 0 <= sample.storage_bytes_free <= sample.storage_bytes_total
    assert 0 <= sample.gpus_free <= sample.gpus_total
    assert HostResources.from_wire(sample.to_wire()) == sample


def test_a_data_directory_not_created_yet_is_measured_on_its_file_system(
    tmp_path: Path,
) -> None:
    later = ResourceMonitor(tmp_path / "not" / "yet").storage_bytes()
    assert later[0] == ResourceMonitor(tmp_path).storage_bytes()[0] > 0


def test_free_cpu_is_capacity_minus_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(resources.os, "getloadavg", lambda: (1.25, 0.0, 0.0))
    assert ResourceMonitor(Path(".")).cpu_millicores() == (4000, 2750)
    monkeypatch.setattr(resources.os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert ResourceMonitor(Path(".")).cpu_millicores() == (4000, 0)


def test_a_host_that_lacks_everything_reads_as_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_loadavg() -> tuple[float, float, float]:
        raise OSError("no load average")

    def no_sysconf(name: str) -> int:
        raise ValueError(name)

    def no_disk(path: Any) -> Any:
        raise OSError("gone")

    monkeypatch.setattr(resources.os, "cpu_count", lambda: None)
    monkeypatch.setattr(resources.os, "getloadavg", no_loadavg)
    monkeypatch.setattr(resources.os, "sysconf", no_sysconf)
    monkeypatch.setattr(resources, "_memory_from_psutil", lambda: None)
    monkeypatch.setattr(resources.shutil, "disk_usage", no_disk)
    monitor = ResourceMonitor(
        tmp_path, meminfo_path=tmp_path / "no-meminfo", nvidia_smi="no-such-nvidia-smi"
    )
    assert monitor.sample() == HostResources(0, 0, 0, 0, 0, 0, 0, 0)


def test_without_proc_meminfo_memory_comes_from_elsewhere(tmp_path: Path) -> None:
    total, free = ResourceMonitor(tmp_path, meminfo_path=tmp_path / "absent").memory_bytes()
    assert total > 0
    assert 0 <= free <= total


# --- GPUs through nvidia-smi ------------------------------------------------------------


def fake_nvidia_smi(tmp_path: Path, body: str) -> str:
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_gpus_are_counted_and_busy_ones_are_not_free(tmp_path: Path) -> None:
    binary = fake_nvidia_smi(tmp_path, """\
case "$1" in
  --query-gpu=uuid) printf 'GPU-aaa\\nGPU-bbb\\nGPU-ccc\\n' ;;
  --query-compute-apps=gpu_uuid) printf 'GPU-bbb\\nGPU-bbb\\n' ;;
  *) exit 2 ;;
esac
""")
    assert ResourceMonitor(tmp_path, nvidia_smi=binary).gpus() == (3, 2)


def test_a_failing_nvidia_smi_means_no_gpus(tmp_path: Path) -> None:
    binary = fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9\n")
    assert ResourceMonitor(tmp_path, nvidia_smi=binary).gpus() == (0, 0)


def test_a_hanging_nvidia_smi_is_given_up_on(tmp_path: Path) -> None:
    binary = fake_nvidia_smi(tmp_path, "exec sleep 30\n")
    monitor = ResourceMonitor(tmp_path, nvidia_smi=binary, gpu_query_timeout_s=0.2)
    assert monitor.gpus() == (0, 0)


def test_count_gpus_ignores_blank_lines_and_unknown_busy_uuids() -> None:
    assert count_gpus("GPU-a\n\nGPU-b\n", "GPU-z\nGPU-a\n") == (2, 1)
    assert count_gpus("", "") == (0, 0)


# --- /proc/meminfo ----------------------------------------------------------------------


def test_meminfo_gives_total_and_available_in_bytes() -> None:
    assert parse_meminfo(MEMINFO) == (24683664 * 1024, 24196456 * 1024)


def test_meminfo_without_memavailable_falls_back_to_free_buffers_and_cached() -> None:
    text = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n"
    assert parse_meminfo(text) == (1000 * 1024, 420 * 1024)


def test_meminfo_that_is_garbage_reads_as_zero() -> None:
    assert parse_meminfo("") == (0, 0)
    assert parse_meminfo("MemTotal: lots kB\nnonsense\n:\nMemAvailable:\n") == (0, 0)


def test_meminfo_available_never_exceeds_total() -> None:
    assert parse_meminfo("MemTotal: 10 kB\nMemAvailable: 20 kB\n") == (10240, 10240)


@given(st.text())
def test_meminfo_parsing_never_raises(text: str) -> None:
    total, available = parse_meminfo(text)
    assert 0 <= available <= total < WIRE_LIMIT


# --- the wire form ----------------------------------------------------------------------


def test_wire_form_is_a_plain_dict_of_ints_that_round_trips() -> None:
    wire = GOOD.to_wire()
    assert set(wire) == {
        "cpu_millicores_total", "cpu_millicores_free", "memory_bytes_total",
        "memory_bytes_free", "storage_bytes_total", "storage_bytes_free", "gpus_total",
        "gpus_free",
    }
    assert all(type(value) is int for value in wire.values())
    assert HostResources.from_wire(wire) == GOOD


def test_unknown_keys_from_a_newer_peer_are_ignored() -> None:
    assert HostResources.from_wire({**GOOD.to_wire(), "fpgas_total": 1}) == GOOD


def with_field(name: str, value: object) -> dict[str, object]:
    wire: dict[str, object] = dict(GOOD.to_wire())
    wire[name] = value
    return wire


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "resources",
        {},
        {k: v for k, v in GOOD.to_wire().items() if k != "gpus_free"},
        with_field("cpu_millicores_total", 8000.0),
        with_field("cpu_millicores_total", "8000"),
        with_field("gpus_total", True),
        with_field("gpus_total", None),
        with_field("memory_bytes_free", -1),
        with_field("storage_bytes_total", 2**63),
        with_field("storage_bytes_free", (1 << 40) + 1),
        with_field("gpus_free", 3),
        with_field("cpu_millicores_free", 8001),
    ],
)
def test_from_wire_rejects_bad_records(bad: object) -> None:
    with pytest.raises(InvalidResources):
        HostResources.from_wire(bad)


def test_the_largest_wire_value_is_accepted() -> None:
    top = WIRE_LIMIT - 1
    HostResources.from_wire(with_field("storage_bytes_total", top))
    wire = with_field("storage_bytes_total", top)
    wire["storage_bytes_free"] = top
    assert HostResources.from_wire(wire).storage_bytes_free == top


def test_invalid_resources_is_a_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match="gpus_free"):
        HostResources.from_wire(with_field("gpus_free", 5))
