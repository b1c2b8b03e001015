"""Remote desktop, device side: capture, change detection, encoding, pacing, input.

Pure modules (no I/O, testable with bytes): ``geometry``, ``damage``, ``scroll``,
``encode``, ``wire``, ``pacing``. Platform seams with their X11 implementations:
``capture`` (``ScreenSource``, mss), ``inject`` (``InputSink``, XTEST), ``cursor``
(``CursorSource``, XFIXES). ``streamer`` ties them to an asyncio loop through two
callables, so nothing here depends on the tunnel. Design and measurements:
``docs/desktop-encoding.md``.
"""
