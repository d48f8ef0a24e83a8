"""Command lines the trainer tests share: the tiny CPU run's flags and torchrun."""

from __future__ import annotations

import socket
import sys

#: ``trainers.cva`` flags of the tests' tiny CPU runs (24³ views, one thread).
TINY = ["--config", "tiny_cpu", "--patch-size", "24", "--threads", "1", "--warmup-steps", "3", "--lr", "2e-3"]


def torchrun(nproc: int, *args: str) -> list[str]:
    """``python -m torch.distributed.run`` on a free local port, ``nproc`` CPU ranks, running ``args``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(port), *args]
