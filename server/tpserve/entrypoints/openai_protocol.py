"""Pydantic models of the OpenAI request bodies tpserve accepts.

As vLLM and SGLang do, a field tpserve does not know is accepted and ignored, with one warning
line per field name, so clients that send extra fields work unchanged. Known fields are strict:
a wrong type (`"stream": "yes"`) is a 400 naming the field, never coerced. A known sampling field
tpserve cannot honour yet is refused, so sampling is never silently different from what was asked.
SGLang/vLLM extensions that users rely on are accepted too: top_k, min_p, repetition_penalty,
min_tokens, ignore_eos, stop_token_ids, prompt_logprobs.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..engine.sampling import StructuredOutput
from .tool_calls import named_call_schema, required_calls_schema

log = logging.getLogger(__name__)
_warned_fields: set[str] = set()

MAX_N = 128
MAX_STOP_STRINGS = 16


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="after")
    def _warn_unknown_fields(self) -> StrictModel:
        for name in self.model_extra or {}:
            key = f"{type(self).__name__}.{name}"
            if key not in _warned_fields:
                _warned_fields.add(key)
                log.warning("ignoring the unknown request field %r (in %s)", name, type(self).__name__)
        return self


class StreamOptions(StrictModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: every chunk carries the usage so far


class SamplingFields(StrictModel):
    """Fields shared by completions and chat completions."""

    model: str
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1)] = -1
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    repetition_penalty: Annotated[float, Field(gt=0)] = 1.0  # vLLM/SGLang
    min_p: Annotated[float, Field(ge=0, le=1)] = 0.0  # vLLM/SGLang
    min_tokens: Annotated[int, Field(ge=0)] = 0  # vLLM/SGLang
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None  # token id (as a string) -> bias
    user: str | None = None
    include_stop_str_in_output: bool = False  # vLLM: the stop string that ended the text stays in it
    skip_special_tokens: bool = True  # vLLM: special tokens are left out of the text
    spaces_between_special_tokens: bool = True  # vLLM: how special tokens are joined when shown
    # Structured outputs besides response_format: vLLM's guided_* and SGLang's names.
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: Annotated[list[str], Field(min_length=1)] | None = None
    guided_grammar: str | None = None
    regex: str | None = None  # SGLang
    ebnf: str | None = None  # SGLang
    json_schema: str | None = None  # SGLang: the schema as JSON text

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return value

    @model_validator(mode="after")
    def _unsupported(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def prompt_logprobs_wanted(self) -> int | None:
        """Top alternatives per prompt token the response needs (None: no prompt log-probabilities)."""
        return None

    def structured_output(self) -> StructuredOutput | None:
        """The one structured-output constraint the body asks for (several are a 400)."""
        asked: list[tuple[str, StructuredOutput]] = []
        schema = self.guided_json if self.guided_json is not None else self.json_schema
        if schema is not None:
            text = schema if isinstance(schema, str) else json.dumps(schema)
            asked.append(("guided_json", StructuredOutput("json_schema", text)))
        for name, kind, value in (
            ("guided_regex", "regex", self.guided_regex),
            ("regex", "regex", self.regex),
            ("guided_grammar", "ebnf", self.guided_grammar),
            ("ebnf", "ebnf", self.ebnf),
        ):
            if value is not None:
                asked.append((name, StructuredOutput(kind, value)))
        if self.guided_choice is not None:
            asked.append(("guided_choice", StructuredOutput("choice", json.dumps(self.guided_choice))))
        asked += self.endpoint_constraints()
        if len(asked) > 1:
            raise ValueError(f"give one structured-output constraint, not {', '.join(n for n, _ in asked)}")
        return asked[0][1] if asked else None

    def endpoint_constraints(self) -> list[tuple[str, StructuredOutput]]:
        """Constraints from fields only one endpoint has (chat: response_format, tool_choice)."""
        return []

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: PromptInput
    max_tokens: Annotated[int, Field(ge=0)] | None = None  # 0 only with echo: score the prompt
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    prompt_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None  # vLLM's extension
    best_of: Annotated[int, Field(ge=1)] | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _completion_checks(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens must be >= 1 (0 only with echo, to score the prompt)")
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError("best_of must be at least n")
        if self.best_of is not None and self.best_of > MAX_N:
            raise ValueError(f"best_of must be at most {MAX_N}")
        if self.best_of is not None and self.best_of > self.n and self.stream:
            raise ValueError("best_of greater than n cannot be streamed (the best are known only at the end)")
        return self

    @property
    def prompt_logprobs_wanted(self) -> int | None:
        wanted = [k for k in (self.prompt_logprobs, self.logprobs if self.echo else None) if k is not None]
        return max(wanted) if wanted else None


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class AssistantFunctionCall(StrictModel):
    name: str
    arguments: str  # JSON text


class AssistantToolCall(StrictModel):
    """A tool call an earlier assistant message made (sent back in the conversation)."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: AssistantFunctionCall


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None  # an assistant message's calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    reasoning_content: str | None = None  # an assistant message's reasoning, as returned (not rendered)

    @model_validator(mode="after")
    def _roles(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages have tool_calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs tool_call_id")
        return self

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates read it (HF's convention: tool-call arguments as a dict)."""
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": _arguments(call.function.arguments)},
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # rendered as the client sent it


class FunctionDefinition(StrictModel):
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments
    strict: bool | None = None


class ToolDefinition(StrictModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(StrictModel):
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs json_schema")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # vLLM's chat template controls
    add_generation_prompt: bool = True
    continue_final_message: bool = False  # render the last (assistant) message open, to continue it
    chat_template_kwargs: dict[str, Any] | None = None  # e.g. {"enable_thinking": false} for Qwen3
    chat_template: str | None = None  # vLLM's: a Jinja template used instead of the model's

    @model_validator(mode="after")
    def _chat_checks(self) -> ChatCompletionRequest:
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) < len(names):
            raise ValueError("tools must have distinct function names")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(
                f"tool_choice names the function {self.tool_choice.function.name!r}, which is not in tools"
            )
        if self.tool_choice == "required" and not names:
            raise ValueError("tool_choice required needs tools")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("continue_final_message needs add_generation_prompt to be false")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("continue_final_message needs the last message to be the assistant's")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def effective_tool_choice(self) -> str | NamedToolChoice:
        """OpenAI's default: auto when tools are given, none otherwise."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"

    def tool_functions(self) -> list[dict[str, Any]]:
        return [tool.function.model_dump(exclude_none=True) for tool in self.tools or []]

    def endpoint_constraints(self) -> list[tuple[str, StructuredOutput]]:
        asked: list[tuple[str, StructuredOutput]] = []
        forced = self.forced_tool_constraint()
        if forced is not None:
            asked.append(("tool_choice", forced))
        response_format = self.response_format
        if response_format is not None and response_format.type != "text":
            if response_format.json_schema is not None:
                text = json.dumps(response_format.json_schema.schema_)
                asked.append(("response_format", StructuredOutput("json_schema", text)))
            else:
                asked.append(("response_format", StructuredOutput("json_object")))
        return asked

    def forced_tool_constraint(self) -> StructuredOutput | None:
        """The grammar that makes the answer a tool call (tool_choice required or a named function)."""
        choice = self.effective_tool_choice
        functions = self.tool_functions()
        if choice == "required":
            schema = required_calls_schema(functions, self.parallel_tool_calls)
        elif isinstance(choice, NamedToolChoice):
            [function] = [f for f in functions if f["name"] == choice.function.name]
            schema = named_call_schema(function)
        else:
            return None
        return StructuredOutput("json_schema", json.dumps(schema))


class TokenizeRequest(StrictModel):
    """vLLM's POST /tokenize: a prompt, or chat messages rendered with the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class DetokenizeRequest(StrictModel):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error the API answers, in OpenAI's shape (documented in /openapi.json)."""

    error: ErrorDetail


ERROR_STATUSES = {
    400: "The request is invalid; the message names the field",
    401: "Missing or wrong API key",
    404: "Unknown model or path",
    413: "Request body too large",
    429: "The waiting queue is full; retry after Retry-After seconds",
    503: "The group is not ready, has failed, or is draining",
    504: "The request ran past --request-timeout",
}


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
