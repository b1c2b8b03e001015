"""Remote desktop sessions, the agent's side: consent on the device, then the stream.

* `policy`        -- the device's consent policy and the sans-I/O session book (every
  rule of who may join what, when; deadlines as outputs);
* `service`       -- `DesktopService`: the ``desktop.*`` instructions, the ``desktop``
  channel (capture, encode, pace, inject: the ``desktop`` package), ``desktop.state``
  events and local audit lines;
* `prompt`        -- runs the device's windows as child processes (asyncio);
* `prompt_app`, `indicator_app`, `ui` -- those windows: small Tk programs;
* `answers`       -- the file drop behind ``outlink-agent desktop accept|deny|end``.

The session contract with the relay and portal is `protocol.desktop`.
"""
