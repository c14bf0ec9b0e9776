"""Errors raised to callers of the engine's API (never for peer input)."""


class TcpError(Exception):
    """Base class for misuse of the engine's API."""


class UnknownConnection(TcpError, KeyError):
    def __init__(self, conn_id):
        super().__init__(f"no connection with id {conn_id}")

    def __str__(self) -> str:
        return self.args[0]


class ConnectionNotWritable(TcpError):
    """send() after shutdown/close, or on a connection that has ended."""


class PortInUse(TcpError):
    pass


class NoFreePort(TcpError):
    pass


class TooManyConnections(TcpError):
    """connect() when the stack already holds TcpConfig.max_connections connections."""


class UnknownRequest(TcpError, KeyError):
    """admit/refuse of a request that was already answered, or never made."""

    def __init__(self, request_id):
        super().__init__(request_id)
        self.request_id = request_id

    def __str__(self) -> str:
        return f"no pending connection request {self.request_id}"
