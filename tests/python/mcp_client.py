#!/usr/bin/env python3
"""Reference MCP client for Tengine's integration tests.

Drives a remote MCP server over Streamable HTTP with the official Python SDK
(`mcp` 2.3.x, see requirements.txt) in its default connect mode ("auto": probe
`server/discover` at 2026-07-28, fall back to the `initialize` handshake), the
way a stock SDK user would. Prints exactly one JSON document on stdout.

Usage:
    mcp_client.py [--url URL] [--token TOKEN] [--timeout SECS] list
    mcp_client.py [--url URL] [--token TOKEN] [--timeout SECS] call NAME JSON_ARGS

    --url     defaults to $MCP_URL          (e.g. http://127.0.0.1:8080/mcp)
    --token   defaults to $MCP_TOKEN; sent as "Authorization: Bearer <token>";
              omitted entirely when empty
    --timeout HTTP read timeout in seconds (default 300, the SDK's own default)
    --mode    SDK connect mode: auto (default) | legacy

Output / exit codes:
    list -> {"tools": [{"name", "description", "inputSchema"}, ...]}  (all pages,
            following nextCursor), exit 0
    call -> {"isError": bool, "content": [...], "structuredContent": ..., "meta": ...},
            exit 0
    a JSON-RPC error answering tools/call or tools/list (MCPError)
         -> {"error": {"code": int, "message": str}}, exit 0 (error.data, if any,
            goes to stderr)
    anything else (connect/handshake failure, HTTP error during the handshake,
    schema validation failure, bad arguments, ...) -> traceback on stderr, exit 2

Note: the SDK itself turns some HTTP-level failures on a request into MCPError
(e.g. HTTP 4xx/5xx without a JSON-RPC body -> -32603 "Server returned an error
response"; 404 with a session -> -32600 "Session terminated"), so those also
print as {"error": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import traceback
from typing import Any

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

# SDK defaults (mcp.shared._httpx_utils): 30 s connect/write/pool, 300 s read.
# A bare httpx2.AsyncClient() would use 5 s for everything, which kills any
# tool call that takes longer than 5 s with httpx2.ReadTimeout.
CONNECT_TIMEOUT = 30.0
MAX_PAGES = 1000


class UsageError(Exception):
    pass


def _dump(model: Any) -> Any:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


def _error_doc(e: MCPError) -> dict[str, Any]:
    if e.error.data is not None:
        print(f"mcp_client: JSON-RPC error data: {json.dumps(e.error.data, default=str)}", file=sys.stderr)
    return {"error": {"code": e.error.code, "message": e.error.message}}


async def _list(client: Client) -> dict[str, Any]:
    tools: list[dict[str, Any]] = []
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        for t in page.tools:
            tools.append({"name": t.name, "description": t.description, "inputSchema": t.input_schema})
        cursor = page.next_cursor
        if cursor is None:
            return {"tools": tools}
        if cursor in seen:
            raise RuntimeError(f"server repeated nextCursor {cursor!r}: pagination loop")
        seen.add(cursor)
    raise RuntimeError(f"tools/list did not finish within {MAX_PAGES} pages")


async def _call(client: Client, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    return {
        "isError": bool(result.is_error),
        "content": [_dump(c) for c in result.content],
        "structuredContent": result.structured_content,
        "meta": result.meta,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    timeout = httpx2.Timeout(CONNECT_TIMEOUT, read=args.timeout)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        async with Client(streamable_http_client(args.url, http_client=http), mode=args.mode) as client:
            try:
                if args.command == "list":
                    return await _list(client)
                return await _call(client, args.name, args.arguments)
            except MCPError as e:
                # Caught inside the `async with` so the session still closes
                # cleanly (DELETE is sent) before we report.
                return _error_doc(e)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("MCP_URL"), help="MCP endpoint URL (env MCP_URL)")
    p.add_argument("--token", default=os.environ.get("MCP_TOKEN", ""), help="bearer token (env MCP_TOKEN)")
    p.add_argument("--timeout", type=float, default=300.0, help="HTTP read timeout, seconds (default 300)")
    p.add_argument("--mode", default="auto", choices=["auto", "legacy"], help="SDK connect mode (default auto)")
    p.add_argument("--debug", action="store_true", help="SDK debug logging to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list all tools (follows nextCursor)")
    c = sub.add_parser("call", help="call a tool")
    c.add_argument("name")
    c.add_argument("json_args", help='tool arguments as a JSON object, e.g. \'{"x": 1}\' (or null)')
    args = p.parse_args(argv)
    if not args.url:
        p.error("--url (or MCP_URL) is required")
    if args.command == "call":
        try:
            parsed = json.loads(args.json_args)
        except json.JSONDecodeError as e:
            p.error(f"JSON_ARGS is not valid JSON: {e}")
        if parsed is not None and not isinstance(parsed, dict):
            p.error("JSON_ARGS must be a JSON object or null")
        args.arguments = parsed
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.debug else logging.WARNING)
    try:
        doc = asyncio.run(run(args))
    except BaseException:  # noqa: BLE001 - includes ExceptionGroup from anyio task groups
        traceback.print_exc(file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
