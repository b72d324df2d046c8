"""Sans-IO core of the LLM stub: validate a chat request, build its deterministic reply.

The reply echoes the last user message and adds a fixed sentence, so tests can assert the
exact text. Tokens are whitespace-delimited pieces, each carrying its leading whitespace
(`"You"`, `" said:"`, ...), so joining the tokens gives back the text exactly. Response
shapes follow the OpenAI chat completions API (`chat.completion`, `chat.completion.chunk`,
error objects); streams are server-sent events, `data: <json>\\n\\n`, ended by
`data: [DONE]\\n\\n`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tunneler.errors import InvalidRequest

MODEL_ID = "tunneler-demo"
OWNED_BY = "tunneler"
REPLY_SENTENCE = "This reply comes from the tunneler demo model."
MAX_REPLY_TOKENS = 4096
"""Longest reply whatever `max_tokens` says (a model's output limit)."""
MAX_MESSAGES = 1024

_TOKEN = re.compile(r"\s*\S+")
SSE_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat completion request the stub uses."""

    model: str
    prompt_text: str
    """All message text, for prompt token accounting."""
    last_user_text: str
    max_tokens: int
    stream: bool
    include_usage: bool
    """`stream_options.include_usage`: send a final usage chunk before `[DONE]`."""


@dataclass(frozen=True)
class Reply:
    """A generated reply: its tokens and why generation stopped."""

    tokens: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int

    @property
    def text(self) -> str:
        """The whole reply."""
        return "".join(self.tokens)

    def usage(self) -> dict[str, int]:
        """The OpenAI `usage` object."""
        completion = len(self.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def tokenize(text: str) -> list[str]:
    """Split text into tokens whose concatenation is the text (trailing space dropped)."""
    return _TOKEN.findall(text)


def _content_text(content: Any, index: int) -> str:
    """Text of a message `content`: a string, a list of parts, or null."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise InvalidRequest("content must be a string or an array of content parts",
                             f"messages[{index}].content")
    texts = []
    for part in content:
        if not isinstance(part, dict):
            raise InvalidRequest("content parts must be objects", f"messages[{index}].content")
        if part.get("type") == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequest("text content parts need a string 'text'",
                                     f"messages[{index}].content")
            texts.append(text)
    return " ".join(texts)


def _messages(value: Any) -> list[tuple[str, str]]:
    """(role, text) of every message, validated."""
    if value is None:
        raise InvalidRequest("you must provide a 'messages' parameter", "messages")
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'messages' must be a non-empty array", "messages")
    if len(value) > MAX_MESSAGES:
        raise InvalidRequest(f"'messages' has more than {MAX_MESSAGES} items", "messages")
    result = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest("each message must be an object with a string 'role'",
                                 f"messages[{index}]")
        result.append((message["role"], _content_text(message.get("content"), index)))
    return result


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer", name)
    return value


def _max_tokens(body: dict[str, Any]) -> int:
    limits = [_positive_int(body, "max_tokens"), _positive_int(body, "max_completion_tokens")]
    return min([limit for limit in limits if limit is not None], default=MAX_REPLY_TOKENS)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean", name)
    return value


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", "stream_options")
    return _flag(options, "include_usage")


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Decode and validate a `POST /v1/chat/completions` body.

    Raises:
        InvalidRequest: the body is not JSON, not an object, or a field is invalid.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model", MODEL_ID)
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", "model")
    n = body.get("n", 1)
    if n not in (1, None):
        raise InvalidRequest("only n=1 is supported", "n")
    messages = _messages(body.get("messages"))
    user_texts = [text for role, text in messages if role == "user"]
    return ChatRequest(model=model, prompt_text=" ".join(text for _, text in messages),
                       last_user_text=user_texts[-1] if user_texts else "",
                       max_tokens=_max_tokens(body), stream=_flag(body, "stream"),
                       include_usage=_include_usage(body))


def reply_text(last_user_text: str) -> str:
    """The full (untruncated) reply to a user message."""
    said = " ".join(last_user_text.split())
    return f'You said: "{said}". {REPLY_SENTENCE}' if said else REPLY_SENTENCE


def generate(request: ChatRequest) -> Reply:
    """The reply to a request, cut at `max_tokens` (then finish_reason is "length")."""
    tokens = tokenize(reply_text(request.last_user_text))
    limit = min(request.max_tokens, MAX_REPLY_TOKENS)
    finish = "length" if len(tokens) > limit else "stop"
    return Reply(tokens=tuple(tokens[:limit]), finish_reason=finish,
                 prompt_tokens=len(tokenize(request.prompt_text)))


def completion(completion_id: str, created: int, model: str, reply: Reply) -> dict[str, Any]:
    """A `chat.completion` object."""
    message = {"role": "assistant", "content": reply.text, "refusal": None}
    return {"id": completion_id, "object": "chat.completion", "created": created,
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": reply.finish_reason}],
            "usage": reply.usage()}


def chunk(completion_id: str, created: int, model: str, *, delta: dict[str, Any],
          finish_reason: str | None = None) -> dict[str, Any]:
    """A `chat.completion.chunk` object with one choice."""
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}]}


def usage_chunk(completion_id: str, created: int, model: str, reply: Reply) -> dict[str, Any]:
    """The final chunk sent when `stream_options.include_usage` is set (no choices)."""
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": model, "system_fingerprint": None, "choices": [], "usage": reply.usage()}


def stream_chunks(completion_id: str, created: int, model: str, reply: Reply,
                  *, include_usage: bool = False) -> list[dict[str, Any]]:
    """Every chunk of a streamed reply, in order: role, one per token, finish, [usage]."""
    chunks = [chunk(completion_id, created, model, delta={"role": "assistant", "content": ""})]
    chunks.extend(chunk(completion_id, created, model, delta={"content": token})
                  for token in reply.tokens)
    chunks.append(chunk(completion_id, created, model, delta={},
                        finish_reason=reply.finish_reason))
    if include_usage:
        chunks.append(usage_chunk(completion_id, created, model, reply))
    return chunks


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object (compact JSON has no newline)."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def error_body(message: str, *, error_type: str = "invalid_request_error",
               param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An OpenAI error object."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def models_list(created: int) -> dict[str, Any]:
    """The `GET /v1/models` answer."""
    return {"object": "list", "data": [model_object(created)]}


def model_object(created: int) -> dict[str, Any]:
    """The one model the stub serves."""
    return {"id": MODEL_ID, "object": "model", "created": created, "owned_by": OWNED_BY}
