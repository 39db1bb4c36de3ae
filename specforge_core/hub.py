"""Fail at once when a Hugging Face Hub id can load from nowhere.

``transformers.from_pretrained(hub_id)`` without network waits ~30 s: huggingface_hub retries
a failed connection with exponential backoff (1, 2, 4, 8, 8 s; ``_http_backoff_base``), printing
a warning per try, and no setting changes that short of ``HF_HUB_OFFLINE=1`` (which a user's
shell does not set). ``require_hub_or_cache`` asks first, cheaply: a local path, a repo already
in the HF cache, or offline mode go on to the real loading code unchanged; otherwise one HEAD
request to the Hub endpoint (huggingface_hub's own HTTP client, so its proxy and certificate
settings apply) with a short timeout decides, and an unreachable Hub is one ``ModelLoadError``
naming the id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .errors import ModelLoadError

PROBE_TIMEOUT_S = 5.0  # connect + response of one HEAD request to the Hub endpoint


def require_hub_or_cache(name: str, revision: Optional[str], what: str) -> None:
    """Raise ``ModelLoadError`` naming ``name`` when it is not a local path, not in the local HF
    cache, and the Hub does not answer. ``what`` says which recipe key named it (for the message)."""
    if Path(name).expanduser().exists():
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.is_offline_mode():
        return  # huggingface_hub fails at once itself, naming what it could not find
    try:
        cached = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # not a valid repo id: transformers says so at once, without a request
        return
    if isinstance(cached, str):
        return  # in the cache: transformers falls back to it when the Hub cannot be reached
    problem = hub_unreachable()
    if problem is not None:
        raise ModelLoadError(
            f"could not load {what} '{name}': not a local directory, not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), and the Hub ({constants.ENDPOINT}) cannot be reached ({problem}). "
            f"With network it is downloaded once; offline, fetch it elsewhere with `hf download {name}` "
            "and point the recipe at the folder"
        )


def hub_unreachable() -> Optional[str]:
    """None when the Hub endpoint answers (any HTTP status), else why not, in one line."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except Exception as e:  # DNS failure, refused / timed-out connection, TLS error, proxy error
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return f"{type(e).__name__}: {first}" if first else type(e).__name__
    return None
