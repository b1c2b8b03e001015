"""Message schemas both ends of a tunnel speak on top of its channels (sans-I/O).

`envelope`: the JSON request/response envelope of the ``control`` and ``rpc`` channels.
`control`: the control channel's messages (hello, renew, event, instruct). The agent and
the relay import them from here, so a device installs no relay code.
"""
