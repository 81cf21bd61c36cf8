"""What this host has and has free: CPU, memory, storage and GPUs, as integers for gossip.

`ResourceMonitor.sample()` reads the host and never raises: whatever it cannot find out (no
/proc, no load average, no nvidia-smi, a missing disk) reads as 0. It blocks (a subprocess
for GPUs, up to `gpu_query_timeout_s`), so call it from trio as
`await trio.to_thread.run_sync(monitor.sample)`.

Free CPU is capacity minus the 1-minute load average; free memory is the kernel's
MemAvailable; free storage is what an unprivileged process may still write; a GPU is free
when no compute process runs on it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, fields
from pathlib import Path

log = logging.getLogger("dcloud.runtime.resources")

# Every figure fits a signed 64-bit integer on the wire (msgpack, CBOR, SQLite).
WIRE_LIMIT = 2**63
GPU_QUERY_TIMEOUT_S = 2.0
MEMINFO_PATH = Path("/proc/meminfo")


class InvalidResources(ValueError):
    """A resources record (usually from a peer's heartbeat) is malformed."""


@dataclass(frozen=True)
class HostResources:
    """A host's capacity and what is free of it. CPU in millicores, memory and storage in
    bytes, GPUs as a count; free never exceeds total."""

    cpu_millicores_total: int
    cpu_millicores_free: int
    memory_bytes_total: int
    memory_bytes_free: int
    storage_bytes_total: int
    storage_bytes_free: int
    gpus_total: int
    gpus_free: int

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if type(value) is not int:
                raise InvalidResources(
                    f"{field.name} must be an integer, got {type(value).__name__}"
                )
            if not 0 <= value < WIRE_LIMIT:
                raise InvalidResources(f"{field.name} must be in [0, 2**63), got {value}")
        for kind in ("cpu_millicores", "memory_bytes", "storage_bytes", "gpus"):
            free, total = getattr(self, f"{kind}_free"), getattr(self, f"{kind}_total")
            if free > total:
                raise InvalidResources(f"{kind}_free ({free}) exceeds {kind}_total ({total})")

    def to_wire(self) -> dict[str, int]:
        """A plain dict of ints, keyed by field name (msgpack-ready)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    @classmethod
    def from_wire(cls, obj: object) -> HostResources:
        """Validate and rebuild a record sent by `to_wire`; raises InvalidResources.

        Keys this version does not know are ignored, so a newer peer can add figures."""
        if not isinstance(obj, dict):
            raise InvalidResources(f"resources must be a map, got {type(obj).__name__}")
        names = [field.name for field in fields(cls)]
        missing = [name for name in names if name not in obj]
        if missing:
            raise InvalidResources(f"resources lack {', '.join(missing)}")
        return cls(**{name: obj[name] for name in names})


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, available) in bytes from the text of /proc/meminfo; 0 for what is missing.

    Kernels before 3.14 have no MemAvailable: MemFree + Buffers + Cached stands in for it.
    """
    kib: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or not parts[0].isdigit():
            continue
        if len(parts) > 1 and parts[1] != "kB":
            continue
        kib[name.strip()] = int(parts[0])
    total = kib.get("MemTotal", 0) * 1024
    if "MemAvailable" in kib:
        available = kib["MemAvailable"] * 1024
    else:
        available = sum(kib.get(name, 0) for name in ("MemFree", "Buffers", "Cached")) * 1024
    return _clamp(total), min(_clamp(available), _clamp(total))


def count_gpus(gpu_uuids: str, busy_gpu_uuids: str) -> tuple[int, int]:
    """(total, free) from nvidia-smi's CSV output: one GPU uuid per line, and the uuid of
    the GPU of each running compute process (repeats allowed)."""
    gpus = {line.strip() for line in gpu_uuids.splitlines() if line.strip()}
    busy = {line.strip() for line in busy_gpu_uuids.splitlines() if line.strip()}
    return len(gpus), len(gpus - busy)


class ResourceMonitor:
    """Samples this host's resources; `storage_path` is where the node keeps its data."""

    def __init__(
        self,
        storage_path: Path,
        *,
        meminfo_path: Path = MEMINFO_PATH,
        nvidia_smi: str = "nvidia-smi",
        gpu_query_timeout_s: float = GPU_QUERY_TIMEOUT_S,
    ) -> None:
        self.storage_path = storage_path
        self.meminfo_path = meminfo_path
        self.nvidia_smi = nvidia_smi
        self.gpu_query_timeout_s = gpu_query_timeout_s

    def sample(self) -> HostResources:
        cpu_total, cpu_free = self.cpu_millicores()
        memory_total, memory_free = self.memory_bytes()
        storage_total, storage_free = self.storage_bytes()
        gpus_total, gpus_free = self.gpus()
        return HostResources(
            cpu_millicores_total=cpu_total,
            cpu_millicores_free=cpu_free,
            memory_bytes_total=memory_total,
            memory_bytes_free=memory_free,
            storage_bytes_total=storage_total,
            storage_bytes_free=storage_free,
            gpus_total=gpus_total,
            gpus_free=gpus_free,
        )

    def cpu_millicores(self) -> tuple[int, int]:
        total = _clamp((os.cpu_count() or 0) * 1000)
        try:
            load1 = os.getloadavg()[0]
        except (OSError, AttributeError):  # no load average on this platform
            return total, 0
        if not (math.isfinite(load1) and load1 >= 0):
            return total, 0
        return total, max(0, total - int(load1 * 1000))

    def memory_bytes(self) -> tuple[int, int]:
        try:
            total, free = parse_meminfo(self.meminfo_path.read_text(errors="replace"))
        except OSError:
            total, free = 0, 0
        if total > 0:
            return total, free
        return _memory_from_psutil() or _memory_from_sysconf()

    def storage_bytes(self) -> tuple[int, int]:
        # The data directory may not exist before the node first writes to it: measure the
        # file system it will be created on.
        path = self.storage_path
        try:
            while not path.exists() and path != path.parent:
                path = path.parent
            usage = shutil.disk_usage(path)
        except (OSError, ValueError):
            return 0, 0
        total = _clamp(usage.total)
        return total, min(_clamp(usage.free), total)

    def gpus(self) -> tuple[int, int]:
        binary = shutil.which(self.nvidia_smi)
        if binary is None:
            return 0, 0
        deadline = time.monotonic() + self.gpu_query_timeout_s
        listed = _run([binary, "--query-gpu=uuid", "--format=csv,noheader"], deadline)
        if listed is None:
            return 0, 0
        busy = _run(
            [binary, "--query-compute-apps=gpu_uuid", "--format=csv,noheader"], deadline
        )
        total, free = count_gpus(listed, busy or "")
        if busy is None:  # without the running processes, no GPU is known to be free
            free = 0
        return _clamp(total), _clamp(free)


def _run(argv: list[str], deadline: float) -> str | None:
    """stdout of a command that exited 0 before the deadline, else None."""
    timeout = deadline - time.monotonic()
    if timeout <= 0:
        return None
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, errors="replace", timeout=timeout,
            check=False, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s failed: %s", argv[0], exc)
        return None
    if done.returncode != 0:
        log.debug("%s exited %d: %s", argv[0], done.returncode, done.stderr.strip()[:200])
        return None
    return done.stdout


def _memory_from_psutil() -> tuple[int, int] | None:
    try:
        import psutil  # optional: not every host has it
    except ImportError:
        return None
    try:
        memory = psutil.virtual_memory()
    except Exception:  # psutil raises its own errors on unsupported hosts
        return None
    total = _clamp(int(memory.total))
    return (total, min(_clamp(int(memory.available)), total)) if total > 0 else None


def _memory_from_sysconf() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = _clamp(page * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):
        return 0, 0
    try:
        free = _clamp(page * os.sysconf("SC_AVPHYS_PAGES"))
    except (OSError, ValueError):
        free = 0
    return total, min(free, total)


def _clamp(value: int) -> int:
    return min(max(value, 0), WIRE_LIMIT - 1)
