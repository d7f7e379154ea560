"""A fault for the tests to inject into a real server's processes, with no knob in the product.

A test that starts a server with this folder on `PYTHONPATH` and `STREAMER_TEST_RAISE=ROLE:FILE`
in its environment makes the first actor of that role to find FILE (and remove it: one of them,
once) raise in its `on_idle`, outside any stream: a bug no `contain` takes. Every process of the
group imports this at start; only the one that wins the removal raises.
"""

from __future__ import annotations

import os

_fault = os.environ.get("STREAMER_TEST_RAISE")
if _fault:
    import importlib

    _role, _, _trigger = _fault.partition(":")
    _module = importlib.import_module(f"streamer.actors.{_role}")
    _cls = getattr(_module, _role.capitalize())
    _on_idle = _cls.on_idle

    def _raise_once(self: object) -> None:
        try:
            os.unlink(_trigger)
        except FileNotFoundError:
            _on_idle(self)
            return
        raise RuntimeError(f"a bug injected by a test into the {_role}, outside any stream")

    _cls.on_idle = _raise_once
