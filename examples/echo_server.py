"""An echo server on usertcp, written exactly as for asyncio.start_server.

Run as root inside a network namespace (it creates the TUN device utcp0):
    ip netns add demo && ip netns exec demo python examples/echo_server.py
then, in the same namespace:  echo hi | nc -N 10.7.0.2 7
"""

import asyncio

import usertcp


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    print(f"{peer[0]}:{peer[1]} closed")
    writer.close()
    await writer.wait_closed()


async def main() -> None:
    async with usertcp.Stack.open(tun="utcp0", address="10.7.0.2",
                                  host_address="10.7.0.1/24") as stack:
        server = await stack.start_server(handle, 7)
        print("echo on 10.7.0.2:7; Ctrl-C to stop")
        async with server:
            await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
