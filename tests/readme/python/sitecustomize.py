# Loaded before a README snippet (on PYTHONPATH): any connection to another
# host than this one raises, so a snippet that goes around the proxy fails
# here instead of reaching WeChat.
import socket

_connect = socket.socket.connect
_LOCAL = ("127.0.0.1", "::1", "localhost")


def _guarded(self, address):
    if isinstance(address, tuple) and address[0] not in _LOCAL:
        raise ConnectionRefusedError(f"the snippet bypassed the proxy: it connected to {address[0]}")
    return _connect(self, address)


socket.socket.connect = _guarded
