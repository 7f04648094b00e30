"""Fetching the official archives, where a network exists."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of `url` answers a TCP connection (no network here: False, quickly)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def fetch(url: str, folder: Path, md5: str, extract: bool = False) -> None:
    """Download `url` into `folder`, check its MD5 and, for an archive, unpack it there."""
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    folder.mkdir(parents=True, exist_ok=True)
    if extract:
        download_and_extract_archive(url, str(folder), md5=md5)
    else:
        download_url(url, str(folder), md5=md5)
