"""Is the Hugging Face hub reachable? Asked once per process, with a short timeout.

Without this, an offline machine spends a long time in the hub client's retries before every fallback.
When the hub is unreachable we put the hub libraries in offline mode (their flags are read at import time,
so we set the module attributes too): anything already in the local Hugging Face cache still loads.
"""
import functools
import os
import socket


def _go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets.config
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True


@functools.lru_cache(maxsize=1)
def hub_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        _go_offline()
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        _go_offline()
        return False
