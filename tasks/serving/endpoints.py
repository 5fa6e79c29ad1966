"""Checks any OpenAI-compatible model server must pass: healthy, then a real chat answer."""

from __future__ import annotations

import time

import httpx

from schemas.serving import SmokeResult

SMOKE_PROMPT = "Reply with one short sentence: what is the capital of France?"


class SmokeTestFailed(RuntimeError):
    """The server did not become healthy, or did not answer a chat completion."""


def wait_for_health(
    url: str, *, timeout: float = 300, poll_interval: float = 2.0, is_alive=None
) -> dict:
    """Poll `url` (a `/health` or `/v1/models` endpoint) until it answers 200; return its JSON.

    `/health` must also say `{"status": "healthy"}`. `is_alive()`, when given, is asked
    between polls so a server process that died ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        try:
            response = httpx.get(url, timeout=10)
            if response.status_code == 200:
                body = response.json()
                if not url.rstrip("/").endswith("/health") or body.get("status") == "healthy":
                    return body
                last = f"status {body.get('status')!r}"
            else:
                last = f"HTTP {response.status_code}"
        except (httpx.HTTPError, ValueError) as exc:
            last = type(exc).__name__
        if is_alive is not None and not is_alive():
            raise SmokeTestFailed(
                f"the server behind {url} exited before it became healthy ({last})"
            )
        if time.monotonic() >= deadline:
            raise SmokeTestFailed(f"{url} was not healthy within {timeout:.0f}s (last: {last})")
        time.sleep(poll_interval)


def smoke_chat(
    base_url: str, *, model: str | None = None, prompt: str = SMOKE_PROMPT, timeout: float = 300
) -> SmokeResult:
    """POST one chat completion to `{base_url}/v1/chat/completions`; fail unless it answers with text."""
    payload = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 32,
        "temperature": 0,
    }
    if model:
        payload["model"] = model
    url = base_url.rstrip("/") + "/v1/chat/completions"
    try:
        response = httpx.post(url, json=payload, timeout=timeout)
    except httpx.HTTPError as exc:
        raise SmokeTestFailed(
            f"chat completion at {url} failed: {type(exc).__name__}: {exc}"
        ) from None
    if response.status_code != 200:
        raise SmokeTestFailed(
            f"chat completion at {url} answered HTTP {response.status_code}: {response.text[:300]}"
        )
    try:
        body = response.json()
        reply = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise SmokeTestFailed(
            f"chat completion at {url} is not OpenAI-shaped: {response.text[:300]}"
        ) from None
    if not isinstance(reply, str) or not reply.strip():
        raise SmokeTestFailed(f"chat completion at {url} returned an empty answer")
    return SmokeResult(
        url=url,
        model=body.get("model"),
        prompt=prompt,
        reply=reply.strip(),
        completion_tokens=(body.get("usage") or {}).get("completion_tokens"),
    )
