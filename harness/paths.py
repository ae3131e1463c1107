"""Where the repository's inputs live and where builds are cached."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KERNEL_CONFIG_DIR = REPO / "kernel-config"
PATCH_DIR = KERNEL_CONFIG_DIR / "patches"
GUEST_DIR = REPO / "guest"
DEBIAN_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")


def cache_dir() -> Path:
    """Per-user cache: HARNESS_CACHE, else $XDG_CACHE_HOME or ~/.cache."""
    explicit = os.environ.get("HARNESS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hpet-nmi-harness"
