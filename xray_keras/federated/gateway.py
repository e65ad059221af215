"""The SuperLink's only door to the sites: a TLS gateway that passes Flower's Fleet API and nothing else.

Flower 1.42's SuperLink serves the Fleet API (SuperNodes), the Control API (`flwr run`, `flwr
supernode register|unregister`) and the Runtime API (the ServerApp) on one HTTP port, and without
Flower Enterprise's account authentication the Control API answers anyone who reaches it. So the
SuperLink listens on loopback only, the operator's machine, and this gateway is what the sites
reach: it presents the SuperLink's certificate and forwards `POST /v1/fleet/<method>` for the Fleet
API's methods, signed (Flower's SuperNode authentication headers: a timestamp within Flower's
tolerance, signed by the key the request names) by one of the federation's site keys (the
`site_<k>.pub` files beside the certificate), with a declared body of at most `MAX_BODY` bytes.
Everything else gets 403 (411, 413) and one log line naming the caller, the path and why; what it
forwards the SuperLink authenticates again (that key's registration and node id).

  python -m xray_keras.federated.gateway --listen=0.0.0.0:9092 --superlink=127.0.0.1:9093 \\
      --certs=federation/superlink

docs/federated_security.md has the threat model this is part of.
"""

import logging as std_logging
import os
import ssl
import sys

FLEET_METHODS = frozenset(
  {
    "register-node",
    "activate-node",
    "deactivate-node",
    "unregister-node",
    "send-node-heartbeat",
    "pull-messages",
    "push-messages",
    "get-run",
    "get-fab",
    "push-object",
    "pull-object",
    "confirm-message-received",
  }
)
_HOP_BY_HOP = frozenset(
  {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
)
MAX_BODY = 64 * 2**20  # Flower 1.42 sends arrays in chunks of at most 5 MiB
log = std_logging.getLogger("xray_keras.federated.gateway")


def allowed(method, path):
  """Whether the gateway forwards `method path`: a Fleet API call, nothing else."""
  prefix = "/v1/fleet/"
  return method == "POST" and path.startswith(prefix) and path[len(prefix) :] in FLEET_METHODS


def site_keys(certs):
  """The public numbers of the federation's site keys (`site_<k>.pub` in `certs`)."""
  from cryptography.hazmat.primitives import serialization

  keys = set()
  for name in sorted(os.listdir(certs)):
    if name.startswith("site_") and name.endswith(".pub"):
      with open(os.path.join(certs, name), "rb") as f:
        keys.add(serialization.load_ssh_public_key(f.read()).public_numbers())
  return frozenset(keys)


def unsigned(headers, keys):
  """Why `headers` are not a federation site's signed Fleet request, or ""."""
  import base64
  import datetime

  from flwr.common.constant import SYSTEM_TIME_TOLERANCE, TIMESTAMP_HEADER, TIMESTAMP_TOLERANCE
  from flwr.supercore.constant import FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER
  from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature

  try:
    key = bytes_to_public_key(base64.b64decode(headers[FLEET_HTTP_PUBLIC_KEY_HEADER], validate=True))
    signature = base64.b64decode(headers[FLEET_HTTP_SIGNATURE_HEADER], validate=True)
    timestamp = headers[TIMESTAMP_HEADER]
    age = (datetime.datetime.now(datetime.UTC) - datetime.datetime.fromisoformat(timestamp)).total_seconds()
  except (KeyError, ValueError, TypeError) as e:
    return f"no valid SuperNode signature headers ({type(e).__name__})"
  if key.public_numbers() not in keys:
    return "signed by a key that is not one of the federation's sites"
  if not -SYSTEM_TIME_TOLERANCE < age < TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE:
    return f"signed timestamp {age:.0f} s old"
  if not verify_signature(key, timestamp.encode("ascii"), signature):
    return "the signature does not match the key"
  return ""


def app(upstream, ca_file, keys):
  """The gateway's ASGI app, forwarding allowed requests signed by one of `keys` to `upstream`, trusting `ca_file`."""
  import httpx
  from starlette.background import BackgroundTask
  from starlette.requests import Request
  from starlette.responses import JSONResponse, StreamingResponse

  client = httpx.AsyncClient(base_url=upstream, verify=ssl.create_default_context(cafile=ca_file), timeout=None)

  async def forward(request):
    path = request.url.path
    caller = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
    if not allowed(request.method, path) or request.url.query:
      log.warning("Refused %s %s from %s: only the Fleet API is served here.", request.method, path, caller)
      return JSONResponse({"detail": "Only the Fleet API is served on this address."}, status_code=403)
    why = unsigned(request.headers, keys)
    if why:
      log.warning("Refused %s %s from %s: %s.", request.method, path, caller, why)
      return JSONResponse({"detail": "Only the federation's sites are served on this address."}, status_code=403)
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_BODY:
      code, why = (411, "no Content-Length") if not length.isdigit() else (413, f"a body of {length} bytes")
      log.warning("Refused %s %s from %s: %s.", request.method, path, caller, why)
      return JSONResponse({"detail": f"A Fleet request declares a body of at most {MAX_BODY} bytes."}, status_code=code)
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
    upstream_request = client.build_request(request.method, path, headers=headers, content=request.stream())
    try:
      response = await client.send(upstream_request, stream=True)
    except httpx.HTTPError as e:
      log.error("The SuperLink at %s did not answer %s: %s", upstream, path, e)
      return JSONResponse({"detail": "The SuperLink is not reachable."}, status_code=502)
    out_headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP | {"content-length"}}
    return StreamingResponse(
      response.aiter_raw(),
      status_code=response.status_code,
      headers=out_headers,
      background=BackgroundTask(response.aclose),
    )

  async def gateway(scope, receive, send):  # every method and path reaches `forward`, so every refusal is logged
    if scope["type"] == "lifespan":
      while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
      await client.aclose()
      await send({"type": "lifespan.shutdown.complete"})
      return
    response = await forward(Request(scope, receive))
    await response(scope, receive, send)

  return gateway


def serve(listen, superlink, certs):
  """Serves the gateway on `listen` (host:port) for the SuperLink at `superlink`, with the TLS files in `certs`."""
  import uvicorn

  host, _, port = listen.rpartition(":")
  std_logging.basicConfig(
    level=std_logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
  )
  std_logging.getLogger("httpx").setLevel(std_logging.WARNING)
  keys = site_keys(certs)
  log.info(
    "Fleet gateway on https://%s for the SuperLink at https://%s (Fleet API only, %d site keys)",
    listen,
    superlink,
    len(keys),
  )
  uvicorn.run(
    app(f"https://{superlink}", os.path.join(certs, "ca.crt"), keys),
    host=host.strip("[]"),
    port=int(port),
    ssl_certfile=os.path.join(certs, "server.crt"),
    ssl_keyfile=os.path.join(certs, "server.key"),
    log_level="warning",
    access_log=False,
  )


def main(argv=None):
  from absl import flags

  listen = flags.DEFINE_string("listen", "0.0.0.0:9092", "host:port the sites connect to.")
  superlink = flags.DEFINE_string("superlink", "127.0.0.1:9093", "The SuperLink's own host:port, on loopback.")
  certs = flags.DEFINE_string("certs", None, "The SuperLink's folder from provision: ca.crt, server.crt, server.key.")
  flags.FLAGS(argv or sys.argv)
  if not certs.value:
    sys.exit("error: --certs is required (the superlink/ folder written by python -m xray_keras.federated.provision).")
  serve(listen.value, superlink.value, certs.value)


if __name__ == "__main__":
  main()
