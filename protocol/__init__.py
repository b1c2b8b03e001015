"""Every message that crosses a process boundary, once, with its limits and its
parse/encode pair (sans-I/O except `protocol.aio`).

`envelope`: the JSON request/response envelope of the ``control`` and ``rpc`` channels.
`control`: the control channel's messages (hello, renew, event, instruct).
`rpc`: the service ``rpc`` channel's requests and the ``bridge`` channel's metadata.
`desktop`: the remote desktop session contract (actions, events, channel metadata).
`ids`: the text form of a device id.
`aio`: asyncio adapters (`aio.client.ServiceClient`, the service side of ``/service``).

The agent, the relay and the portal import their contracts from here, so a device
installs no relay code and the portal imports none.
"""
