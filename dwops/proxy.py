"""The reverse proxy in front of Prefect: nginx, rendered from the policy's routes.

    client --basic auth--> nginx 127.0.0.1:PORT --(server's own credential)--> Prefect 127.0.0.1:PORT+1
                               | auth_request /_authz, body-decided requests /_gateway
                               v
                           gateway 127.0.0.1:PORT+2 (dwops/gateway.py)

- nginx authenticates every `/api/` request against the accounts' htpasswd (bcrypt, made by
  Apache's htpasswd), then asks the gateway whether that account may make it (`auth_request`),
  or hands the requests decided on their body to the gateway whole.
- The UI's pages (static files and `/ui-settings`) and `/api/health` need no account: the UI
  asks for one on its sign-in page.
- Callers' `Authorization` never reaches Prefect: nginx sends the server's own credential
  (`upstream-auth.conf`, 0600), which no account knows, so nobody on the machine can go around
  the proxy either. Prefect's automation headers are dropped: a caller cannot pose as one.
- The access log names the account of every request.
"""

from __future__ import annotations

import os
import pwd
import re
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

from dwops.policy import BODY_ROUTES, STREAM_ROUTES


# Debian's libnginx-mod-http-headers-more-filter: clears nginx's own Basic challenge on a 401.
HEADERS_MORE = "/usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so"


@dataclass(frozen=True)
class ProxyLayout:
    folder: Path  # nginx's prefix: config, logs, temp files, pid
    port: int  # the address users know: 127.0.0.1:port
    server_port: int  # the Prefect server's, loopback only
    gateway_port: int
    htpasswd: Path
    upstream_credential: str  # the Prefect server's PREFECT_SERVER_API_AUTH_STRING

    @property
    def config(self) -> Path:
        return self.folder / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.folder / "error.log"

    @property
    def access_log(self) -> Path:
        return self.folder / "access.log"


def gateway_map() -> str:
    """nginx `map` lines: which method and path go to the gateway (from dwops.policy)."""
    lines = []
    for method, pattern, _kind in BODY_ROUTES:
        lines.append(f'        "~^{method} /api{pattern}$" 1;')
    return "\n".join(lines)


def stream_map() -> str:
    """nginx `map` lines: which paths are Prefect's streams, relayed by the gateway."""
    return "\n".join(f'        "~^/api{pattern}$" 1;' for pattern in STREAM_ROUTES)


def render(layout: ProxyLayout) -> dict[Path, str]:
    """The files nginx needs, by path: its config and the upstream credential's include."""
    f = layout.folder
    user = pwd.getpwuid(os.getuid()).pw_name
    common = """
            proxy_set_header Host $host;
            proxy_set_header Prefect-Automation-ID "";
            proxy_set_header Prefect-Automation-Name "";"""
    auth = f"""
            auth_basic "dwops";
            auth_basic_user_file {layout.htpasswd};"""
    credential = b64encode(layout.upstream_credential.encode()).decode()
    conf = f"""# Rendered by dwops (dwops/proxy.py); edits are overwritten by `dwops up`.
{"user " + user + ";" if os.getuid() == 0 else ""}
load_module {HEADERS_MORE};
worker_processes 1;
daemon off;
pid {f}/nginx.pid;
error_log {layout.error_log} warn;
events {{ worker_connections 512; }}

http {{
    server_tokens off;
    log_format dwops '$time_iso8601 $remote_addr account=$remote_user "$request" $status '
                     '$body_bytes_sent $request_time';
    access_log {layout.access_log} dwops;
    client_body_temp_path {f}/tmp/body;
    proxy_temp_path {f}/tmp/proxy;
    fastcgi_temp_path {f}/tmp/fastcgi;
    uwsgi_temp_path {f}/tmp/uwsgi;
    scgi_temp_path {f}/tmp/scgi;
    client_max_body_size 16m;
    proxy_http_version 1.1;
    proxy_read_timeout 300s;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    # Requests decided on their body go to the gateway (dwops.policy.BODY_ROUTES).
    map "$request_method $uri" $dwops_gateway {{
        default 0;
{gateway_map()}
    }}

    # Prefect's streams (websockets) go to the gateway's relay (dwops.policy.STREAM_ROUTES).
    map $uri $dwops_stream {{
        default 0;
{stream_map()}
    }}

    upstream prefect {{ server 127.0.0.1:{layout.server_port}; keepalive 16; }}
    upstream gateway {{ server 127.0.0.1:{layout.gateway_port}; keepalive 16; }}

    server {{
        listen 127.0.0.1:{layout.port};

        location = /api/health {{{common}
            proxy_set_header Authorization "";
            proxy_pass http://prefect;
        }}

        location /api/ {{{auth}
            error_page 401 = @unauthorized;
            if ($dwops_gateway) {{ rewrite ^ /_gateway last; }}
            if ($dwops_stream) {{ rewrite ^ /_ws last; }}  # rewritten before access checks
            auth_request /_authz;
            auth_request_set $dwops_reason $upstream_http_x_dwops_reason;
            error_page 403 = @refused;{common}
            include {f}/upstream-auth.conf;
            proxy_set_header Connection "";
            proxy_pass http://prefect;
        }}

        location = /_gateway {{
            internal;{auth}
            error_page 401 = @unauthorized;{common}
            proxy_set_header Authorization "";
            proxy_set_header Connection "";
            proxy_set_header X-Dwops-Account $remote_user;
            proxy_set_header X-Original-URI $request_uri;
            proxy_pass http://gateway;
        }}

        # Prefect's streams sign in inside the stream: the gateway checks that token itself.
        location = /_ws {{
            internal;{common}
            proxy_set_header Authorization "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
            proxy_pass http://gateway;
        }}

        location = /_authz {{
            internal;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Authorization "";
            proxy_set_header Connection "";
            proxy_set_header X-Dwops-Account $remote_user;
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_pass http://gateway;
        }}

        # No `WWW-Authenticate: Basic` challenge: a browser would answer it with its own
        # sign-in dialog instead of the UI's sign-in page.
        location @unauthorized {{
            more_clear_headers WWW-Authenticate;
            default_type application/json;
            return 401 '{{"detail": "sign in with a dwops account (NAME:SECRET)"}}';
        }}

        location @refused {{
            default_type application/json;
            add_header X-Dwops-Reason $dwops_reason always;
            return 403 '{{"detail": "refused by dwops: $dwops_reason"}}';
        }}

        location / {{{common}
            proxy_set_header Authorization "";
            proxy_pass http://prefect;
        }}
    }}
}}
"""
    include = f'proxy_set_header Authorization "Basic {credential}";\n'
    return {layout.config: re.sub(r"\n{3,}", "\n\n", conf), f / "upstream-auth.conf": include}


def write(layout: ProxyLayout) -> None:
    """Write nginx's files (0600: one holds the server's credential) and its folders."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (layout.folder / "tmp" / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    for path, text in render(layout).items():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)


def nginx_argv(layout: ProxyLayout, *extra: str) -> list[str]:
    return ["nginx", "-p", str(layout.folder), "-c", str(layout.config),
            "-e", str(layout.error_log), *extra]
