"""Both ends in one program: a kernel socket serves HTTP, usertcp is the client.

The stack opens a connection to the kernel side of its own TUN device
(10.7.0.1), sends a request and reads the reply, with asyncio's stream API.
Run as root inside a network namespace:
    ip netns add demo && ip netns exec demo python examples/http_client_server.py
"""

import asyncio

import usertcp


async def kernel_http(reader, writer):  # an ordinary asyncio server on a kernel socket
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n")
    await writer.drain()
    writer.close()


async def main() -> None:
    async with usertcp.Stack.open(address="10.7.0.2", host_address="10.7.0.1/24") as stack:
        kernel_server = await asyncio.start_server(kernel_http, "10.7.0.1", 8080)
        reader, writer = await stack.open_connection("10.7.0.1", 8080)
        writer.write(b"GET / HTTP/1.1\r\nHost: 10.7.0.1\r\n\r\n")
        print((await reader.read()).decode())  # until the kernel's FIN
        writer.close()
        await writer.wait_closed()
        kernel_server.close()


if __name__ == "__main__":
    asyncio.run(main())
