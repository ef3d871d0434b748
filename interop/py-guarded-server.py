"""An MCP server built with the official Python SDK (`mcp`, pinned in requirements.txt) as its
documentation shows: a resource server verifying the issuer's JWTs (PyJWT, the issuer's JWKS).
Used by `gatehouse check`'s tests as a server nobody here wrote the transport of.

    python py-guarded-server.py ISSUER PORT [--any-audience]

`--any-audience` is the classic flaw: the verifier does not check `aud` and the SDK's resource
check is off, so a token for another resource is accepted.
"""
import socket
import sys
import threading
import time

import jwt
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

issuer, port = sys.argv[1], int(sys.argv[2])
any_audience = "--any-audience" in sys.argv
resource = f"http://127.0.0.1:{port}/mcp"
jwks = jwt.PyJWKClient(f"{issuer}/jwks")


class Verifier:
    async def verify_token(self, token):
        try:
            key = jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["ES256", "RS256"],
                issuer=issuer,
                audience=None if any_audience else resource,
                options={"verify_aud": not any_audience},
            )
        except Exception:
            return None
        return AccessToken(
            token=token,
            client_id=claims.get("client_id", ""),
            scopes=claims.get("scope", "").split(),
            expires_at=claims.get("exp"),
            resource=None if any_audience else resource,
            subject=claims.get("sub"),
        )


mcp = MCPServer(
    "py-guarded",
    token_verifier=Verifier(),
    auth=AuthSettings(
        issuer_url=issuer,
        resource_server_url=resource,
        required_scopes=["mcp:basic"],
        validate_token_resource=not any_audience,
    ),
)


@mcp.tool()
def echo(text: str) -> str:
    """Echoes the text."""
    return text


def announce():
    # READY once the port answers (uvicorn logs to stderr only).
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            print("READY", flush=True)
            return
        except OSError:
            time.sleep(0.05)


threading.Thread(target=announce, daemon=True).start()
mcp.run("streamable-http", host="127.0.0.1", port=port)
