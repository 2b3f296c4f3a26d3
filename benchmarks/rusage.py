"""Run a command and write its CPU, wall time and peak RSS as JSON: ``rusage.py OUT -- argv``.

Linux carries a process's peak RSS across ``exec`` and starts a forked child's peak at its
parent's resident size, so a child of the (bigger) benchmark process would report at least the
benchmark's own size. This small process forks the measured command itself, so the floor is its
own few MB, and reads that command's usage alone with ``os.wait4``.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    """Fork, exec, wait4; the command's exit code becomes ours."""
    out, separator, *argv = sys.argv[1:]
    if separator != "--" or not argv:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: become the command
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - started
    with open(out, "w") as handle:
        json.dump({"cpu": usage.ru_utime + usage.ru_stime, "wall": wall,
                   "peak_rss_mb": usage.ru_maxrss / 1024}, handle)  # Linux: KiB
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    raise SystemExit(main())
