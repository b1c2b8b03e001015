"""asyncio adapters of the protocol: the only part of `protocol` that does I/O.

`client`: `ServiceClient`, the service side of a relay's ``/service`` endpoint (the
portal, tests, benchmarks) over a `tunnel.aio` tunnel.
"""
