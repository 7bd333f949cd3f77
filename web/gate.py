"""Who the explorer answers: the host names it was started for, and for its API, its own page.

Listening on 127.0.0.1 does not keep other sites out: a page whose name an attacker makes resolve
to 127.0.0.1 (DNS rebinding) is then same-origin with the explorer, and any page can make the
browser send a request to it (an <img>, a form). So every request must name, in its Host header,
a host the server was started for, and the API answers only its own page: a request that a
browser says comes from another site (Origin, Sec-Fetch-Site) is refused. A request with neither
header comes from a program, not a page (curl, a script): it is let in, as it could reach the
database's own port with the same rights.
"""
from __future__ import annotations

import ipaddress
from typing import Callable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")
FOREIGN_SITES = ("cross-site", "same-site")   # Sec-Fetch-Site of a request another page made


def host_name(host: str) -> str:
    """The name part of a Host header value: 'localhost:8000' -> 'localhost', '[::1]:80' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Gate:
    """ASGI middleware in front of the explorer: refuses, in one line, a request for a host name
    the server was not started for, and a request to the API made by another site's page."""

    def __init__(self, app, host: str = "127.0.0.1", port: Callable[[], int] = lambda: 8000):
        self.app, self.port = app, port   # port(): the one it listens on (known once it does)
        self.names = {*LOOPBACK_NAMES, host.strip("[]").lower()} - set(ANY_ADDRESS)
        # Listening on every address, the server is reached by any of this machine's addresses;
        # an address in the Host header cannot be a rebinding (that needs a name), so any is let in.
        self.any_address = host in ANY_ADDRESS

    def allowed_host(self, name: str) -> bool:
        return name in self.names or (self.any_address and is_address(name))

    def shown_names(self) -> str:
        return ", ".join(f"[{n}]" if ":" in n else n for n in sorted(self.names))

    def refusal(self, path: str, headers: Headers) -> tuple[int, str] | None:
        """(HTTP status, why) when this request is refused; None when it is answered. The port in
        the Host header is not checked: a rebinding needs a foreign name, and Docker may publish
        the port under another number."""
        raw = headers.get("host")
        if not raw:
            return 400, f"the request has no Host header; open the explorer as http://127.0.0.1:{self.port()}/"
        name = host_name(raw)
        if not self.allowed_host(name):
            shown = name if len(name) <= 60 else name[:59] + "…"
            return 400, (f"gptsql serve answers only for the host names it was started for ({self.shown_names()}), "
                         f"not {shown!r}: open http://127.0.0.1:{self.port()}/, or start it with --host {shown} "
                         "to be reached by that name")
        if not path.startswith("/api/"):
            return None       # the page itself, its files, the engine's SQL: anyone may open them
        origin, site = headers.get("origin"), headers.get("sec-fetch-site")
        if origin is not None and urlsplit(origin).netloc.lower() != raw.strip().lower():
            return 403, (f"the explorer's data and generations are for its own page only, not for a page of "
                         f"{origin[:80]}: open http://{raw.strip()}/ instead")
        if site in FOREIGN_SITES:
            return 403, ("the explorer's data and generations are for its own page only, not for another site's: "
                         f"open http://{raw.strip()}/ instead")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = self.refusal(scope["path"], Headers(scope=scope))
        if refused is None:
            return await self.app(scope, receive, send)
        status, why = refused
        response = (JSONResponse({"error": why}, status_code=status) if scope["path"].startswith("/api/")
                    else PlainTextResponse(why + "\n", status_code=status))
        await response(scope, receive, send)
