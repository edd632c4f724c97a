"""Is the Hugging Face hub reachable, and is a file in the local cache? Answered in milliseconds to seconds, without
importing any model library, so a run that needs hub weights on an offline machine fails at once with one line
instead of after a minute of retries.

Offline means ``HF_HUB_OFFLINE`` is set, or a first connection to the hub's endpoint fails within
``PROBE_TIMEOUT_S``; after a failed probe this process sets ``HF_HUB_OFFLINE=1`` so no library retries either.
"""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 2.0


def offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=None)
def _probe(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


_REASON: list[str] = []


def offline() -> bool:
    """True when the hub cannot be used: ``HF_HUB_OFFLINE``, or the endpoint refuses or times out a first connection
    (then ``HF_HUB_OFFLINE=1`` is set for this process)."""
    if offline_env():
        _REASON[:] = _REASON or ["HF_HUB_OFFLINE is set"]
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    reachable = _probe(url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80))
    if not reachable:
        _REASON[:] = [f"the hub ({endpoint}) is unreachable"]
        os.environ["HF_HUB_OFFLINE"] = "1"
    return not reachable


def why() -> str:
    """Why ``offline()`` said so, for the error line."""
    return _REASON[0] if _REASON else "the hub is unreachable"


def cached(repo_id: str, filename: str) -> bool:
    """Whether ``filename`` of hub repo ``repo_id`` is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        hit = try_to_load_from_cache(repo_id, filename)
    except Exception:  # noqa: BLE001 - a malformed id: not cached
        return False
    return isinstance(hit, str) and os.path.exists(hit)
