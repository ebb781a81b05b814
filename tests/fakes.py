"""Fake plugins for tests: registered by the ``fake_plugin`` fixture in conftest.py, never built."""

from __future__ import annotations

from mura_ens.plugin import Plugin


class FakePlugin(Plugin):
    name = "fake_net"
    description = "A fake plugin registered by a fixture"
    body_parts = ("XR_HAND",)
    defaults = {"width": 8, "rate": 0.5, "flag": True, "mode": "a"}
    choices = {"mode": ("a", "b")}
    default_input_size = 48

    def build(self, config):  # pragma: no cover - never built here
        raise AssertionError("not built in registry tests")
