"""Host peak RSS: how much RAM the process needed during a block, on every device.

Offloading moves weights to the host (diffusers issue 7970 was host RAM growing with model
offload), so a VRAM figure alone can hide a host blow-up. Linux keeps the high-water mark of
the resident set in ``VmHWM``; writing "5" to ``/proc/self/clear_refs`` resets it to the
current RSS, which turns a lifetime figure into a per-block one. Where that is not allowed
the lifetime peak is reported, and ``method`` says so, because a lifetime peak can be far
above what the block itself needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: VmHWM reset through clear_refs before the block: the peak belongs to the block.
METHOD_RESET = "vmhwm-reset"
#: VmHWM could not be reset: the peak is the process lifetime's.
METHOD_VMHWM_LIFETIME = "vmhwm-lifetime"
#: No /proc (macOS, BSD): getrusage's ru_maxrss, a lifetime peak.
METHOD_RUSAGE_LIFETIME = "ru_maxrss-lifetime"
#: Nothing available (Windows without /proc or resource).
METHOD_UNAVAILABLE = "unavailable"

#: What each method means, in the words a report shows (the JSON keeps the short code).
METHOD_WORDS = {
    METHOD_RESET: "during this block",
    METHOD_VMHWM_LIFETIME: "since the process started: the kernel would not reset the peak",
    METHOD_RUSAGE_LIFETIME: "since the process started",
    METHOD_UNAVAILABLE: "not available on this system",
}


def describe_method(method: str) -> str:
    """The plain words for a method code; a code this table does not know (an estimate's own
    wording, a newer version's code) is shown as it is."""
    return METHOD_WORDS.get(method, method)


class HostRssMeter:
    """Reads (and where possible resets) the process's peak resident set size.

    The paths are parameters so that the fallback can be exercised on a machine where the
    reset works, by pointing ``clear_refs`` at a file that cannot be written.
    """

    def __init__(
        self,
        status: Path = Path("/proc/self/status"),
        clear_refs: Path = Path("/proc/self/clear_refs"),
    ):
        self._status = status
        self._clear_refs = clear_refs
        self._resettable: bool | None = None  # unknown until the first reset attempt

    @property
    def method(self) -> str:
        """How ``peak()`` is obtained; decided by the first ``reset()``."""
        if self._status_fields() is not None:
            return METHOD_RESET if self._resettable else METHOD_VMHWM_LIFETIME
        if _rusage_maxrss() is not None:
            return METHOD_RUSAGE_LIFETIME
        return METHOD_UNAVAILABLE

    def reset(self) -> bool:
        """Start a new peak window at the current RSS; False when the kernel does not allow it.

        A write that succeeds but leaves VmHWM above VmRSS (sandboxed kernels accept the
        write and ignore it) also counts as not resettable. After a refusal no further
        attempt is made: the answer does not change within a process.
        """
        if self._resettable is False or self._status_fields() is None:
            self._resettable = False
            return False
        try:
            self._clear_refs.write_text("5")
        except OSError:
            self._resettable = False
            return False
        fields = self._status_fields()
        slack = 4 * 2**20  # RSS may move a little between the write and the read
        self._resettable = fields is not None and fields["VmHWM"] <= fields["VmRSS"] + slack
        return self._resettable

    def peak(self) -> int | None:
        """Peak RSS in bytes since the last successful reset (else the process lifetime)."""
        fields = self._status_fields()
        if fields is not None:
            return fields["VmHWM"]
        return _rusage_maxrss()

    def current(self) -> int | None:
        """Resident set size now, in bytes (None without /proc)."""
        fields = self._status_fields()
        return fields["VmRSS"] if fields is not None else None

    def _status_fields(self) -> dict[str, int] | None:
        try:
            text = self._status.read_text()
        except OSError:
            return None
        fields = {}
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                fields[name] = int(value.split()[0]) * 1024  # reported in kB
        return fields if len(fields) == 2 else None


def _rusage_maxrss() -> int | None:
    try:
        import resource
    except ImportError:
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere


#: One meter per process: the high-water mark is process-wide, and trackers fold it.
HOST_RSS = HostRssMeter()
