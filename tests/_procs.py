"""Subprocess command lines the trainer tests share."""

from __future__ import annotations

import socket
import sys


def torchrun(nproc: int, *args: str) -> list[str]:
    """``python -m torch.distributed.run`` on a free local port, ``nproc`` CPU ranks, running ``args``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(port), *args]
