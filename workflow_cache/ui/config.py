"""What one dashboard serves and to whom, and the rule that guards a non-loopback bind."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["UiConfig", "UnsafeBind", "is_loopback"]


class UnsafeBind(ValueError):
    """A bind beyond this machine without ``WORKFLOW_CACHE_UI_TOKEN``: refused at start."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


@dataclass(frozen=True)
class UiConfig:
    """One dashboard: where step outcomes and archives live, and what it lets a user do."""

    redis_url: str
    namespace: str = "default"
    storage: str | None = None
    """Folder or fsspec URL of working-directory archives; None: the local cache folder."""
    host: str = "127.0.0.1"
    port: int = 8089
    read_only: bool = False
    token: str | None = None
    """When set, every request must carry it (bearer header or the login cookie)."""
    metrics_urls: tuple[str, ...] = ()
    """Workers' ``/metrics`` endpoints whose counters the overview adds up."""
    poll_seconds: float = 2.0
    """How often an open page asks the JSON API for fresh data."""
    summary_seconds: float = 10.0
    """How long the overview's counts (a scan of outcomes and archives) are reused."""

    def check_bind(self) -> None:
        """Raise :class:`UnsafeBind` for a non-loopback host without a token."""
        if not is_loopback(self.host) and not self.token:
            raise UnsafeBind(
                f"refusing to serve the dashboard on {self.host}: binding beyond loopback "
                "needs WORKFLOW_CACHE_UI_TOKEN"
            )
