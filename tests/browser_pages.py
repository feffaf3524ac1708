"""A tiny site for the browser engine's unit tests: a login, a composer whose submit answers as
the test asks, a 2FA page and a profile page. (The sandbox's X- and Instagram-like composers are
the e2e targets; this one only has to exercise each outcome of the engine.)

`Site.mode` picks the submit's answer: ok, rate, invalid, hang, double (the page submits twice),
nosubmit (the button does nothing), changed (the composer lost its test id), button_changed (the
Post button lost its test id), challenge (compose
sends you to a 2FA page). Without the session cookie every page but /login is a login wall.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

COOKIE = "session"

PLAYBOOK = """
playbook = "unit"
version = 1
platform = "unit"
step_timeout_ms = 3000

[login]
check_url = "{base_url}/home"
login_url = "{base_url}/login"
logged_in = { selector = "[data-testid=account-menu]", cookie = "session" }
login_wall = { url_contains = ["/login"], selector = "form#login" }
challenge = { url_contains = ["/2fa"], text = "Enter the code" }

[[compose]]
name = "open_composer"
action = "goto"
url = "{base_url}/compose"

[[compose]]
name = "type_text"
action = "fill"
selector = "[data-testid=composer]"
value = "{text}"

[commit]
name = "submit"
action = "click"
selector = "[data-testid=post-button]"
timeout_ms = 3000
response = { url = "/api/posts$", method = "POST" }
success = { selector = "[data-testid=toast]" }

[[commit.outcome]]
status = ["2xx"]
result = "accepted"

[[commit.outcome]]
status = ["429"]
result = "rejected"
error_class = "RATE_LIMITED"
message_json = "error.message"

[[commit.outcome]]
status = ["422"]
result = "rejected"
error_class = "INVALID_CONTENT"
message_json = "error.message"

[permalink]
id_json = "id"
url_template = "{base_url}/{account}/status/{post_id}"

[verify]
url = "{base_url}/{account}"
ready_selector = "[data-testid=timeline]"
item_selector = "[data-testid=post]"
text_selector = "[data-testid=post-text]"
link_selector = "a.permalink"
id_from_url = "/status/([0-9]+)"
"""

_COMPOSE = """<!doctype html><html><body><h1>Compose</h1>
<textarea data-testid="%(testid)s"></textarea>
<button data-testid="%(button)s">Post</button>
<div id="out"></div>
<script>
const mode = "%(mode)s";
async function send(text) {
  const r = await fetch("/api/posts", {method: "POST", body: JSON.stringify({text}),
                                       headers: {"content-type": "application/json"}});
  const data = await r.json();
  const out = document.getElementById("out");
  out.innerHTML = r.ok ? '<div data-testid="toast">Posted</div>'
                       : '<div role="alert">' + data.error.message + '</div>';
}
document.querySelector("button").onclick = () => {
  if (mode === "nosubmit") return;
  const text = document.querySelector("textarea").value;
  send(text).catch(() => {});
  if (mode === "double") send(text).catch(() => {});
};
</script></body></html>"""


@dataclass
class Site:
    mode: str = "ok"
    posts: list[str] = field(default_factory=list)
    submits: int = 0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/login", self.login, methods=["GET", "POST"]),
                Route("/home", self.home),
                Route("/2fa", self.challenge),
                Route("/compose", self.compose),
                Route("/api/posts", self.create, methods=["POST"]),
                Route("/{account}", self.profile),
            ]
        )

    async def login(self, request: Request) -> Response:
        if request.method == "POST":
            response = RedirectResponse("/home", status_code=303)
            response.set_cookie(COOKIE, "yes")
            return response
        return HTMLResponse(
            '<form id="login" method="post"><input name="user">'
            '<button id="sign-in">Sign in</button></form>'
        )

    async def home(self, request: Request) -> Response:
        if COOKIE not in request.cookies:
            return RedirectResponse("/login")
        return HTMLResponse('<nav data-testid="account-menu">alice</nav>')

    async def challenge(self, request: Request) -> Response:
        return HTMLResponse("<p>Enter the code we sent you</p><input name=otp>")

    async def compose(self, request: Request) -> Response:
        if COOKIE not in request.cookies:
            return RedirectResponse("/login")
        if self.mode == "challenge":
            return RedirectResponse("/2fa")
        testid = "composer-v2" if self.mode == "changed" else "composer"
        button = "post-button-v2" if self.mode == "button_changed" else "post-button"
        return HTMLResponse(_COMPOSE % {"testid": testid, "button": button, "mode": self.mode})

    async def create(self, request: Request) -> Response:
        self.submits += 1
        text = (await request.json())["text"]
        if self.mode == "rate":
            return JSONResponse({"error": {"message": "slow down"}}, 429, {"retry-after": "30"})
        if self.mode == "invalid":
            return JSONResponse({"error": {"message": "too long"}}, 422)
        if self.mode == "hang":
            await asyncio.sleep(30)
        self.posts.append(text)
        return JSONResponse({"id": str(len(self.posts))}, 201)

    async def profile(self, request: Request) -> Response:
        account = request.path_params["account"]
        items = "".join(
            f'<article data-testid="post"><p data-testid="post-text">{text}</p>'
            f'<a class="permalink" href="/{account}/status/{i}">link</a></article>'
            for i, text in enumerate(self.posts, start=1)
        )
        return HTMLResponse(f'<main data-testid="timeline">{items}</main>')
