"""Intercept every connection to 10.8.0.0/16: log where it was going and what it carried, and
relay it to the same port on this host's 127.0.0.1. (`usertcp run` does this for a whole program.)

As root, inside a network namespace (it creates the TUN device utcp0 and routes 10.8/16 into it):
    ip netns add demo && ip netns exec demo python examples/interceptor.py
then, in the same namespace:  python -m http.server 8000 --bind 127.0.0.1 &
                              curl http://10.8.1.2:8000/   # any 10.8 address, any port
"""

import asyncio

import usertcp


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    total = 0
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()  # a slow receiver slows the sender: windows close, memory stays small
        total += len(data)
    writer.write_eof()  # half-close carried on
    return total


async def intercept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    host, port = writer.get_extra_info("sockname")  # what the program dialled
    try:
        far_reader, far_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        print(f"{host}:{port}: {exc.strerror}")
        writer.close()
        return
    sent, received = await asyncio.gather(pipe(reader, far_writer), pipe(far_reader, writer))
    print(f"{host}:{port}: {sent} bytes sent, {received} received")
    writer.close()
    far_writer.close()


async def main() -> None:
    async with usertcp.Stack.open(tun="utcp0", address="10.7.0.2",
                                  host_address="10.7.0.1/24",
                                  routes=["10.8.0.0/16"]) as stack:
        server = await stack.start_server(intercept, port=None)  # every address, every port
        print("intercepting 10.8.0.0/16; Ctrl-C to stop")
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
