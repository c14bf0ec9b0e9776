"""A small HTTP/1.1 static file server: GET and HEAD, keep-alive, Connection: close."""

from __future__ import annotations

import asyncio
import html
import mimetypes
import os
import urllib.parse
from email.utils import formatdate
from pathlib import Path

_CHUNK = 256 * 1024
_MAX_HEAD = 16 * 1024
_IDLE_TIMEOUT = 30.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Request Header Fields Too Large",
            505: "HTTP Version Not Supported"}


class StaticFiles:
    """`start_server` callback serving files below `root`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"--root {root}: not a directory")

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            writer.transport.abort()
            return
        writer.close()
        await writer.wait_closed()

    async def _one_request(self, reader, writer) -> bool:
        """Serve one request; True to keep the connection for another."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _IDLE_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                await self._error(writer, 400)
            return False
        except asyncio.LimitOverrunError:
            await self._error(writer, 413)
            return False
        except asyncio.TimeoutError:
            return False
        if len(head) > _MAX_HEAD:
            await self._error(writer, 413)
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            await self._error(writer, 400)
            return False
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            await self._error(writer, 505)
            return False
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = ("close" not in connection if version == "HTTP/1.1"
                      else "keep-alive" in connection)
        if method not in ("GET", "HEAD"):
            await self._error(writer, 405, keep_alive, extra={"Allow": "GET, HEAD"})
            return keep_alive
        path = self._resolve(target)
        if path is None:
            await self._error(writer, 404, keep_alive)
            return keep_alive
        if path.is_dir():
            body = self._listing(path, target).encode()
            await self._respond(writer, 200, "text/html; charset=utf-8", len(body), keep_alive,
                                None if method == "HEAD" else body)
            return keep_alive
        size = path.stat().st_size
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        await self._respond(writer, 200, ctype, size, keep_alive, None)
        if method == "GET":
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    writer.write(chunk)
                    await writer.drain()
        return keep_alive

    def _resolve(self, target: str) -> Path | None:
        raw = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
        path = (self.root / raw.lstrip("/")).resolve()
        if path != self.root and self.root not in path.parents:
            return None  # escapes the root
        if path.is_dir() and (path / "index.html").is_file():
            path = path / "index.html"
        return path if path.exists() else None

    def _listing(self, path: Path, target: str) -> str:
        base = target if target.endswith("/") else target + "/"
        items = "".join(
            f'<li><a href="{html.escape(base + urllib.parse.quote(p.name))}">'
            f"{html.escape(p.name)}</a></li>" for p in sorted(path.iterdir()))
        return f"<!doctype html><title>{html.escape(target)}</title><ul>{items}</ul>\n"

    async def _respond(self, writer, status, ctype, length, keep_alive, body, extra=None):
        head = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Date: {formatdate(usegmt=True)}",
                "Server: usertcp", f"Content-Type: {ctype}", f"Content-Length: {length}",
                f"Connection: {'keep-alive' if keep_alive else 'close'}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if body:
            writer.write(body)
        await writer.drain()

    async def _error(self, writer, status, keep_alive=False, extra=None):
        body = f"{status} {_REASONS[status]}\n".encode()
        await self._respond(writer, status, "text/plain", len(body), keep_alive, body, extra)
