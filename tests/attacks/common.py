"""Shared helpers of the attack reproductions: the node's resident size and a small report."""

import os


def rss_mb(pid):
    """VmRSS of process `pid` in MB (from /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for {pid}")


def split_addr(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def pid_from_args(pid):
    if pid is None:
        return None
    if not os.path.exists(f"/proc/{pid}"):
        raise SystemExit(f"no process {pid}")
    return pid
