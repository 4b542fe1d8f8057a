"""The reverse proxy a clinic puts in front of the app (examples/nginx.conf), started for real in front of a
real `streamlit run app.py`: TLS, the security headers, the metrics endpoint kept private, plain HTTP sent to
HTTPS. Needs nginx and openssl (CI installs them; elsewhere the test is skipped when they are missing)."""
from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from e2e_helpers import REPO, free_port, running_server
from e2e_helpers import missing

pytestmark = pytest.mark.e2e


def fetch(url: str, follow: bool = True) -> tuple[int, dict, bytes]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the test's own self-signed certificate
    handlers = [urllib.request.HTTPSHandler(context=context)]
    if not follow:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None
        handlers.append(NoRedirect())
    try:
        with urllib.request.build_opener(*handlers).open(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_the_example_proxy_serves_the_app_over_tls_with_security_headers(tmp_path):
    nginx, openssl = shutil.which("nginx") or "/usr/sbin/nginx", shutil.which("openssl")
    if not Path(nginx).is_file() or not openssl:
        missing("nginx or openssl is not installed")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    https, http = free_port(), free_port()
    (tmp_path / "app").mkdir()
    with running_server(tmp_path / "app") as (base_url, _process):
        app_port = base_url.rsplit(":", 1)[1]
        config = (REPO / "examples" / "nginx.conf").read_text()
        for old, new in ((r"listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;"), (r"listen 80;", f"listen 127.0.0.1:{http};"),
                         (r"/etc/ssl/imagemasknet/fullchain.pem", str(tmp_path / "cert.pem")),
                         (r"/etc/ssl/imagemasknet/privkey.pem", str(tmp_path / "key.pem")),
                         (r"127.0.0.1:8501", f"127.0.0.1:{app_port}"), (r"/run/nginx-imagemasknet.pid", str(tmp_path / "nginx.pid")),
                         (r"/tmp/imagemasknet-nginx-", str(tmp_path / "nginx-"))):
            assert old in config, old
            config = config.replace(old, new)
        (tmp_path / "nginx.conf").write_text(config)
        (tmp_path / "logs").mkdir()
        proxy = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e",
                                  str(tmp_path / "logs" / "error.log"), "-g", "daemon off;"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    status, headers, body = fetch(f"https://127.0.0.1:{https}/_stcore/health")
                    break
                except OSError:
                    if proxy.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"nginx did not start: {proxy.stdout.read().decode(errors='replace')}")
                    time.sleep(0.3)
            assert status == 200 and body.strip() == b"ok"
            for name, value in (("X-Frame-Options", "DENY"), ("Content-Security-Policy", "frame-ancestors 'none'"),
                                ("X-Content-Type-Options", "nosniff"), ("Strict-Transport-Security", "max-age")):
                assert value in headers.get(name, ""), (name, headers)
            assert fetch(f"https://127.0.0.1:{https}/_stcore/metrics")[0] == 404
            page = fetch(f"https://127.0.0.1:{https}/")
            assert page[0] == 200 and b"<html" in page[2].lower()
            status, headers, _ = fetch(f"http://127.0.0.1:{http}/", follow=False)
            assert status == 301 and re.match(r"https://", headers["Location"])
        finally:
            proxy.terminate()
            proxy.wait(timeout=10)
