"""Every network touch decides within seconds: a reachability probe bounded in time, DNS included.

The libraries this project stands on retry for a long time before they give up on a machine without network
(transformers/huggingface_hub ~50 s for a model name, datasets ~25 s, `wandb sync` and `wandb.init(mode="online")`
longer), so each entry point probes the server first and, when it cannot be reached, fails (or falls back to the local
cache) with one line that says what to set. `socket.create_connection`'s timeout does not cover the name lookup, which
can hang for many seconds on a broken resolver, so the probe runs in a daemon thread and the caller waits at most
`timeout` seconds for it.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
WANDB_DEFAULT_URL = "https://api.wandb.ai"


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to `url`'s host and port (443/80 by scheme when absent) opens within `timeout`
    seconds, name lookup included. Never raises; False for a URL without a host."""
    parts = urlparse(url)
    host = parts.hostname
    if not host:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except (OSError, ValueError):
            result.append(False)

    worker = threading.Thread(target=probe, name=f"probe {host}:{port}", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


_hub_answers: dict[str, bool] = {}  # hub endpoint → reachable, asked once per process (hub_reachable)


def hub_reachable() -> bool:
    """reachable(hub_url()), probed once per process and endpoint: a run touches the hub for its tokenizer, its model
    and each data split, and one probe (≤ PROBE_TIMEOUT_S) answers for all of them."""
    url = hub_url()
    if url not in _hub_answers:
        _hub_answers[url] = reachable(url)
    return _hub_answers[url]


def hub_url() -> str:
    """The Hugging Face hub endpoint huggingface_hub uses (HF_ENDPOINT, else https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as huggingface_hub read them (the libraries then never ask the hub)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def wandb_url() -> str:
    """The W&B server runs are logged and synced to (WANDB_BASE_URL, else https://api.wandb.ai)."""
    return os.environ.get("WANDB_BASE_URL") or WANDB_DEFAULT_URL
