#!/usr/bin/env python3
"""MCP authorization (OAuth 2.1) with the official Python SDK's OAuth client.

The SDK's `OAuthClientProvider` does everything a connector does: it gets the
401, discovers the Protected Resource Metadata and the authorization server's
metadata, registers (dynamic client registration) or uses a Client ID Metadata
Document URL as its client_id, runs PKCE and exchanges the code, refreshes.
Only the person is played here: the redirect handler acts as the browser (with
httpx, following the redirects to the customer's login page and back, then
approving on the consent page by posting its form, as a browser without
JavaScript would), and hands the code to the callback handler.

Usage:
    oauth_client.py --url MCP_URL [--client-metadata-url URL] --tool NAME --arguments JSON

Prints one JSON document:
    {"tools": [names], "call": {"isError", "content"}, "refreshed": bool,
     "access_token", "refresh_token", "client_id", "consent_page": str}
Anything unexpected: traceback on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import re
import sys
import traceback
from urllib.parse import parse_qs, urljoin, urlparse

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

# Never contacted: the browser stops at the redirect to it. Registered without a
# port in the metadata document (loopback redirect URIs match on any port).
REDIRECT_URI = "http://127.0.0.1:53682/callback"


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None
        self.issued: list[OAuthToken] = []

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.issued.append(tokens)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def hidden_inputs(page: str) -> dict[str, str]:
    fields = {}
    for tag in re.findall(r"<input[^>]*>", page):
        name = re.search(r'name="([^"]*)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name and value:
            fields[html.unescape(name.group(1))] = html.unescape(value.group(1))
    return fields


class Browser:
    """Follows the authorization request to the consent page and approves."""

    def __init__(self) -> None:
        self.result: asyncio.Future[AuthorizationCodeResult] | None = None
        self.consent_page = ""

    async def redirect(self, authorization_url: str) -> None:
        self.result = asyncio.get_running_loop().create_future()
        async with httpx2.AsyncClient(follow_redirects=False, timeout=30) as browser:
            response = await browser.get(authorization_url)
            hops = 0
            while response.status_code in (302, 303) and hops < 5:
                response = await browser.get(urljoin(str(response.url), response.headers["location"]))
                hops += 1
            if response.status_code != 200:
                raise RuntimeError(f"expected the consent page, got {response.status_code}: {response.text}")
            self.consent_page = response.text
            action = re.search(r'<form[^>]*action="([^"]*)"', response.text)
            if action is None:
                raise RuntimeError("the consent page has no form")
            form = hidden_inputs(response.text)
            form["decision"] = "approve"
            answer = await browser.post(html.unescape(action.group(1)), data=form)
            if answer.status_code != 303:
                raise RuntimeError(f"consent answered {answer.status_code}: {answer.text}")
            back = urlparse(answer.headers["location"])
            query = {k: v[0] for k, v in parse_qs(back.query).items()}
            self.result.set_result(
                AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))
            )

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return await self.result


async def run(args: argparse.Namespace) -> dict:
    storage = MemoryStorage()
    browser = Browser()
    provider = OAuthClientProvider(
        server_url=args.url,
        client_metadata=OAuthClientMetadata(
            client_name="Tengine test client (Python SDK)",
            redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=browser.redirect,
        callback_handler=browser.callback,
        client_metadata_url=args.client_metadata_url,
    )
    out: dict = {}
    async with httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(30, read=60)) as http:
        async with Client(streamable_http_client(args.url, http_client=http)) as client:
            listed = await client.list_tools()
            out["tools"] = [tool.name for tool in listed.tools]
            result = await client.call_tool(args.tool, json.loads(args.arguments))
            out["call"] = {
                "isError": result.is_error,
                "content": [c.model_dump(mode="json") for c in result.content],
            }
            # The access token expires: the SDK refreshes before its next request.
            before = len(storage.issued)
            provider.context.token_expiry_time = 1.0  # long past (0 would mean "never expires")
            again = await client.call_tool(args.tool, json.loads(args.arguments))
            out["refreshed"] = len(storage.issued) > before and not again.is_error
    assert storage.tokens is not None and storage.client is not None
    out["access_token"] = storage.tokens.access_token
    out["refresh_token"] = storage.tokens.refresh_token
    out["client_id"] = storage.client.client_id
    out["consent_page"] = browser.consent_page
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--client-metadata-url", default=None)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--arguments", default="{}")
    args = parser.parse_args()
    try:
        print(json.dumps(asyncio.run(run(args))))
        return 0
    except Exception:
        traceback.print_exc()
        return 2


if __name__ == "__main__":
    sys.exit(main())
