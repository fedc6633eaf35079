#!/usr/bin/env python3
"""Signs in to an `oidc-gateway demo` through its real login flow (gateway ->
development IdP login form -> callback) and prints the session cookie pair
`__Host-oidc-gateway=<id>`. Standard library only. Loopback use only.

usage: bench/signin.py https://localhost:18443 [user]
"""
import html.parser
import ssl
import sys
import urllib.parse
import urllib.request

GATEWAY = sys.argv[1].rstrip("/")
USER = sys.argv[2] if len(sys.argv) > 2 else "bench@contoso.example"
insecure = ssl.create_default_context()
insecure.check_hostname = False
insecure.verify_mode = ssl.CERT_NONE  # the demo's self-signed certificate, on loopback


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=insecure))


def fetch(url, data=None, cookie=None):
    request = urllib.request.Request(url, data=data)
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        response = opener.open(request)
    except urllib.error.HTTPError as answer:  # 3xx arrive here with NoRedirect
        response = answer
    return response.status, response.headers, response.read().decode("utf-8", "replace")


class FormFields(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.fields, self.action = {}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = attrs.get("action")
        if tag == "input" and attrs.get("type") == "hidden":
            self.fields[attrs["name"]] = attrs.get("value", "")


status, headers, _ = fetch(GATEWAY + "/.gateway/sign_in?rd=%2F")
assert status == 302, f"sign_in answered {status}"
flow_cookie = "; ".join(c.split(";")[0] for c in headers.get_all("Set-Cookie"))
authorize = headers["Location"]

status, _, page = fetch(authorize)
assert status == 200, f"IdP login page answered {status}"
form = FormFields()
form.feed(page)
form.fields["username"] = USER
action = urllib.parse.urljoin(authorize, form.action or urllib.parse.urlsplit(authorize).path)
status, headers, _ = fetch(action, urllib.parse.urlencode(form.fields).encode())
assert status in (302, 303), f"IdP form post answered {status}"
callback = headers["Location"]

status, headers, _ = fetch(callback, cookie=flow_cookie)
assert status == 303, f"callback answered {status}"
for cookie in headers.get_all("Set-Cookie"):
    if cookie.startswith("__Host-oidc-gateway="):
        print(cookie.split(";")[0])
        sys.exit(0)
sys.exit("no session cookie in the callback's answer")
