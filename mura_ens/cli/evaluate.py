"""`mura-ens evaluate` (placeholder until its issue lands; owned by the helper building it)."""

from ._app import app  # noqa: F401
