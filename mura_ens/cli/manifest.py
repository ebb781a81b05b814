"""`mura-ens manifest` (placeholder until its issue lands; owned by the helper building it)."""

from ._app import app  # noqa: F401
