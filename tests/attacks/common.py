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


def parse_target(parser):
    """Adds --addr and --pid to `parser`, parses the command line and, with --pid, prints the
    node's resident size before the attack. Returns (args, host, port, pid)."""
    parser.add_argument("--addr", default="127.0.0.1:3001")
    parser.add_argument("--pid", type=int, help="the node's pid, to report its resident size")
    a = parser.parse_args()
    pid = pid_from_args(a.pid)
    host, port = split_addr(a.addr)
    if pid:
        print(f"node RSS before: {rss_mb(pid):.1f} MB", flush=True)
    return a, host, port, pid
