#!/usr/bin/env python3
"""Reference MCP client for Tengine's integration tests.

Drives a remote MCP server over Streamable HTTP with the official Python SDK
(`mcp` 2.3.x, see requirements.txt) in its default connect mode ("auto": probe
`server/discover` at 2026-07-28, fall back to the `initialize` handshake), the
way a stock SDK user would. Prints exactly one JSON document on stdout.

Usage:
    mcp_client.py [--url URL] [--token TOKEN] [--timeout SECS] list
    mcp_client.py [--url URL] [--token TOKEN] [--timeout SECS] call NAME JSON_ARGS
    mcp_client.py [--url URL] [--token TOKEN] [--timeout SECS] progress NAME JSON_ARGS
    mcp_client.py [--url URL] [--token TOKEN] [--timeout SECS] list-changed ADMIN_URL ADMIN_TOKEN PROJECT_ID
    mcp_client.py [--url URL] [--token TOKEN] [--timeout SECS] cancel NAME JSON_ARGS

    --url     defaults to $MCP_URL          (e.g. http://127.0.0.1:8080/mcp)
    --token   defaults to $MCP_TOKEN; sent as "Authorization: Bearer <token>";
              omitted entirely when empty
    --timeout HTTP read timeout in seconds (default 300, the SDK's own default)
    --mode    SDK connect mode: auto (default) | legacy
    --confirm yes | no: the client declares elicitation and answers every
              confirmation form (elicitation/create, in a session, or an
              InputRequiredResult's request, which the SDK re-issues) by accepting
              with every boolean field true (yes) or by declining (no); each
              message asked goes to stderr as `asked: <message>`

Output / exit codes:
    list -> {"tools": [{"name", "description", "inputSchema"}, ...]}  (all pages,
            following nextCursor), exit 0
    call -> {"isError": bool, "content": [...], "structuredContent": ..., "meta": ...},
            exit 0
    progress -> {"progress": [1, 2, 3], "isError": bool, "content": [...]}, exit 0:
            the call is made with a progress_callback, so it carries
            _meta.progressToken; the values are the `progress` of each
            notifications/progress, in order (integral values as ints)
    list-changed -> {"listChanged": bool}, exit 0: registers a message_handler,
            waits until the GET stream is open (at most 5 s), PATCHes the
            description of the first listed tool through the admin API
            (ADMIN_URL/v1/projects/PROJECT_ID/tools/NAME, Bearer ADMIN_TOKEN; a
            non-2xx answer is an unexpected failure, exit 2) and waits up to 10 s
            for notifications/tools/list_changed
    cancel -> {"cancelled": true, "error": str, "elapsedMs": int, "cancelStatus": int|null},
            exit 0: the call runs under anyio.move_on_after(0.3); on expiry the
            SDK sends notifications/cancelled (cancelStatus: the HTTP status the
            server answered that POST with, null if none was seen within 5 s).
            If the call finished first: {"cancelled": false, "isError", "content"}
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
import time
import traceback
from typing import Any
from urllib.parse import quote

import anyio
import httpx2
from mcp import Client, MCPError
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ToolsListChanged
from mcp import types
from mcp.types import ToolListChangedNotification

# SDK defaults (mcp.shared._httpx_utils): 30 s connect/write/pool, 300 s read.
# A bare httpx2.AsyncClient() would use 5 s for everything, which kills any
# tool call that takes longer than 5 s with httpx2.ReadTimeout.
CONNECT_TIMEOUT = 30.0
MAX_PAGES = 1000
CANCEL_AFTER = 0.3  # seconds
# The stateless revision (no sessions, no GET stream, subscriptions/listen).
MODERN = "2026-07-28"
LIST_CHANGED_WAIT = 10.0  # seconds
GET_STREAM_WAIT = 5.0  # seconds


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


def _number(x: float) -> float | int:
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _body(request: httpx2.Request) -> bytes:
    try:
        return request.content
    except httpx2.RequestNotRead:
        return b""


class _Observer:
    """httpx2 event hooks and an SDK message handler for the extra commands.

    They only watch: they let `list-changed` wait until the SDK has opened its
    GET stream, and `cancel` wait until the notifications/cancelled POST and the
    cancelled call's own POST have been answered before the client closes (see
    `_cancel`).
    """

    def __init__(self) -> None:
        self.get_open = anyio.Event()
        self.get_status: int | None = None
        self.list_changed = anyio.Event()
        self.cancel_answered = anyio.Event()
        self.cancel_status: int | None = None
        self.calls_sent = 0
        self.call_responses: list[httpx2.Response] = []

    async def on_request(self, request: httpx2.Request) -> None:
        if request.method == "POST" and b'"tools/call"' in _body(request):
            self.calls_sent += 1

    async def on_response(self, response: httpx2.Response) -> None:
        request = response.request
        if request.method == "GET" and not self.get_open.is_set():
            self.get_status = response.status_code
            self.get_open.set()
        elif request.method == "POST":
            body = _body(request)
            if b'"notifications/cancelled"' in body:
                self.cancel_status = response.status_code
                self.cancel_answered.set()
            elif b'"tools/call"' in body:
                self.call_responses.append(response)

    async def message_handler(self, message: IncomingMessage) -> None:
        if isinstance(message, ToolListChangedNotification):
            self.list_changed.set()
        elif isinstance(message, Exception):
            print(f"mcp_client: transport error: {message!r}", file=sys.stderr)
        await anyio.lowlevel.checkpoint()


async def _progress(client: Client, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
    values: list[float | int] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        print(f"mcp_client: progress {progress}/{total} {message!r}", file=sys.stderr)
        values.append(_number(progress))

    result = await client.call_tool(name, arguments, progress_callback=on_progress)
    return {
        "progress": values,
        "isError": bool(result.is_error),
        "content": [_dump(c) for c in result.content],
    }


async def _change_tool(admin_url: str, admin_token: str, project_id: str, name: str) -> None:
    url = f"{admin_url.rstrip('/')}/v1/projects/{quote(project_id, safe='')}/tools/{quote(name, safe='')}"
    async with httpx2.AsyncClient(timeout=CONNECT_TIMEOUT) as admin:
        res = await admin.patch(
            url,
            headers={"Authorization": f"Bearer {admin_token}"},
            json={"description": f"changed {time.strftime('%Y-%m-%dT%H:%M:%S')}"},
        )
    if not res.is_success:
        raise RuntimeError(f"PATCH {url}: HTTP {res.status_code} {res.text}")


async def _list_changed_modern(client: Client, admin_url: str, admin_token: str, project_id: str) -> dict[str, Any]:
    """2026-07-28: the change arrives on a subscriptions/listen stream."""
    page = await client.list_tools()
    if not page.tools:
        raise RuntimeError("the project has no tool to change")
    seen = False
    async with client.listen(tools_list_changed=True) as sub:
        await _change_tool(admin_url, admin_token, project_id, page.tools[0].name)
        with anyio.move_on_after(LIST_CHANGED_WAIT):
            async for event in sub:
                if isinstance(event, ToolsListChanged):
                    seen = True
                    break
    return {"listChanged": seen}


async def _list_changed(
    client: Client, observer: _Observer, admin_url: str, admin_token: str, project_id: str
) -> dict[str, Any]:
    if client.protocol_version == MODERN:
        return await _list_changed_modern(client, admin_url, admin_token, project_id)
    if not (client.server_capabilities.tools and client.server_capabilities.tools.list_changed):
        print("mcp_client: the server does not advertise capabilities.tools.listChanged", file=sys.stderr)
    page = await client.list_tools()
    if not page.tools:
        raise RuntimeError("the project has no tool to change")
    name = page.tools[0].name
    # The SDK opens the GET stream by itself after notifications/initialized;
    # change the tool only once it is open, or the notification has nowhere to go.
    with anyio.move_on_after(GET_STREAM_WAIT):
        await observer.get_open.wait()
    if not observer.get_open.is_set():
        print(f"mcp_client: the GET stream did not open within {GET_STREAM_WAIT:g} s", file=sys.stderr)
    elif observer.get_status != 200:
        print(f"mcp_client: the GET stream was refused: HTTP {observer.get_status}", file=sys.stderr)
    await _change_tool(admin_url, admin_token, project_id, name)
    with anyio.move_on_after(LIST_CHANGED_WAIT):
        await observer.list_changed.wait()
    return {"listChanged": observer.list_changed.is_set()}


async def _cancel(client: Client, observer: _Observer, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
    started = time.monotonic()
    with anyio.move_on_after(CANCEL_AFTER) as scope:
        result = await client.call_tool(name, arguments)
    if not scope.cancelled_caught:
        return {"cancelled": False, "isError": bool(result.is_error), "content": [_dump(c) for c in result.content]}
    elapsed_ms = round((time.monotonic() - started) * 1000)
    if client.protocol_version == MODERN:
        # 2026-07-28: the SDK aborts the call's POST; closing it is the cancellation.
        await anyio.sleep(0.1)
        return {"cancelled": True, "elapsedMs": elapsed_ms, "cancelStatus": None}
    # The SDK sends notifications/cancelled on the way out of the cancelled
    # call; let that POST be answered before the client closes.
    with anyio.move_on_after(5.0):
        await observer.cancel_answered.wait()
    if observer.cancel_status is None:
        print("mcp_client: no answer to a notifications/cancelled POST within 5 s", file=sys.stderr)
    # Tengine then answers the cancelled call's own POST (JSON-RPC error -32800
    # for a JSON answer). mcp 2.3.0 hands that late answer to the session even
    # while it closes, and if it lands in the close the transport task fails with
    # anyio.ClosedResourceError / BrokenResourceError (an ExceptionGroup out of
    # `async with Client(...)`). So wait for that answer too, then give the SDK
    # a moment to drop it ("dropping response for unknown/late request id").
    with anyio.move_on_after(5.0):
        while len(observer.call_responses) < observer.calls_sent:
            await anyio.sleep(0.01)
    for r in observer.call_responses:
        print(
            f"mcp_client: cancelled tools/call POST answered HTTP {r.status_code} {r.headers.get('content-type')}",
            file=sys.stderr,
        )
    await anyio.sleep(0.1)
    return {
        "cancelled": True,
        "error": f"tools/call cancelled by anyio.move_on_after({CANCEL_AFTER:g}) after {elapsed_ms} ms",
        "elapsedMs": elapsed_ms,
        "cancelStatus": observer.cancel_status,
    }


def _confirmer(answer: str | None) -> Any:
    if answer is None:
        return None

    async def confirm(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        print(f"asked: {params.message}", file=sys.stderr)
        if answer == "no":
            return types.ElicitResult(action="decline")
        schema = getattr(params, "requested_schema", None) or {}
        properties = schema.get("properties", {}) if isinstance(schema, dict) else {}
        content = {name: True for name, prop in properties.items() if prop.get("type") == "boolean"}
        return types.ElicitResult(action="accept", content=content)

    return confirm


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    timeout = httpx2.Timeout(CONNECT_TIMEOUT, read=args.timeout)
    observer = _Observer()
    hooks = {"request": [observer.on_request], "response": [observer.on_response]}
    async with httpx2.AsyncClient(headers=headers, timeout=timeout, event_hooks=hooks) as http:
        async with Client(
            streamable_http_client(args.url, http_client=http),
            mode=args.mode,
            message_handler=observer.message_handler,
            elicitation_callback=_confirmer(args.confirm),
        ) as client:
            try:
                doc = await _command(client, observer, args)
            except MCPError as e:
                # Caught inside the `async with` so the session still closes
                # cleanly (DELETE is sent) before we report.
                doc = _error_doc(e)
            doc["protocolVersion"] = client.protocol_version
            return doc


async def _command(client: Client, observer: _Observer, args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "list":
        return await _list(client)
    if args.command == "progress":
        return await _progress(client, args.name, args.arguments)
    if args.command == "list-changed":
        return await _list_changed(client, observer, args.admin_url, args.admin_token, args.project_id)
    if args.command == "cancel":
        return await _cancel(client, observer, args.name, args.arguments)
    return await _call(client, args.name, args.arguments)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("MCP_URL"), help="MCP endpoint URL (env MCP_URL)")
    p.add_argument("--token", default=os.environ.get("MCP_TOKEN", ""), help="bearer token (env MCP_TOKEN)")
    p.add_argument("--timeout", type=float, default=300.0, help="HTTP read timeout, seconds (default 300)")
    p.add_argument("--mode", default="auto", choices=["auto", "legacy"], help="SDK connect mode (default auto)")
    p.add_argument("--confirm", choices=["yes", "no"], help="answer confirmation forms (declares elicitation)")
    p.add_argument("--debug", action="store_true", help="SDK debug logging to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list all tools (follows nextCursor)")
    for command, help_text in (
        ("call", "call a tool"),
        ("progress", "call a tool with a progress callback"),
        ("cancel", f"call a tool and cancel it after {CANCEL_AFTER:g} s"),
    ):
        c = sub.add_parser(command, help=help_text)
        c.add_argument("name")
        c.add_argument("json_args", help='tool arguments as a JSON object, e.g. \'{"x": 1}\' (or null)')
    lc = sub.add_parser("list-changed", help="change a tool via the admin API, wait for tools/list_changed")
    lc.add_argument("admin_url", help="admin API base URL, e.g. http://127.0.0.1:8080")
    lc.add_argument("admin_token")
    lc.add_argument("project_id")
    args = p.parse_args(argv)
    if not args.url:
        p.error("--url (or MCP_URL) is required")
    if args.command in ("call", "progress", "cancel"):
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
