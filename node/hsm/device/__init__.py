"""The HSM behind a device boundary: one process per node (``hsmfleet hsm serve``) holds the
backend and answers a narrow, versioned command set over a local Unix socket, like a network
HSM; the node daemon's process holds no key material.

- :mod:`~node.hsm.device.protocol`: frames, the operation and error registries, dispatch;
- :mod:`~node.hsm.device.core`: the core HSM operations and their handlers over a backend;
- :mod:`~node.hsm.device.server`: :class:`DeviceServer`, the socket side;
- :mod:`~node.hsm.device.client`: :class:`DeviceClient` and :class:`DeviceHsm`, the caller's side;
- :mod:`~node.hsm.device.cli`: ``hsmfleet hsm serve``.
"""
