"""The container HEALTHCHECK (``python -m edge_module.healthcheck``): exit 0 when the API answers live.

It speaks HTTPS when ``EDGE_TLS`` (or the files pair) turns TLS on. The probe runs inside the container against
127.0.0.1, so it does not verify the certificate: that one is issued for the gateway's name, for leaf devices.
Kept to the standard library: it runs every 30 seconds.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def _tls_on() -> bool:
    mode = os.environ.get("EDGE_TLS", "").strip().lower()
    if mode:
        return mode != "off"
    return bool(os.environ.get("EDGE_TLS_CERT_FILE"))


def main() -> int:
    port = os.environ.get("EDGE_PORT", "8000")
    scheme = "https" if _tls_on() else "http"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(f"{scheme}://127.0.0.1:{port}/v2/health/live", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        sys.stderr.write(f"not live: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
