"""Request bodies of the Ollama and OpenAI routes (pydantic): types are checked here (a wrong type is a
400 with ``{"error": ...}``), values by the code that uses them. Unknown fields are accepted and ignored,
as both servers do, so newer clients keep working."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, populate_by_name=True)


class Options(_Body):
    num_ctx: int | None = None
    num_predict: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | str | None = None


# an example the OpenAPI document carries, so schema-driven clients (and the fuzz test) reach a real model
ModelName = Annotated[str, Field(examples=["tiny"])]
Format = Literal["", "json"] | dict[str, Any] | None
KeepAlive = float | int | str | None


class GenerateRequest(_Body):
    model: ModelName
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool = True
    raw: bool = False
    format: Format = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    images: list[str] | None = None


class Message(_Body):
    role: str
    content: str | None = ""
    images: list[str] | None = None


class ChatRequest(_Body):
    model: ModelName
    messages: list[Message] = Field(default_factory=list)
    stream: bool = True
    format: Format = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    tools: list[dict[str, Any]] | None = None


class EmbedRequest(_Body):
    model: ModelName
    input: str | list[str] = ""
    truncate: bool = True
    options: Options | None = None
    keep_alive: KeepAlive = None
    dimensions: int | None = None


class EmbeddingsRequest(_Body):
    model: ModelName
    prompt: str = ""
    options: Options | None = None
    keep_alive: KeepAlive = None


class ModelRequest(_Body):
    """show / delete / pull: ``model`` (``name`` in older clients)."""

    model: ModelName | None = None
    name: str | None = None
    verbose: bool | None = None
    stream: bool = True
    insecure: bool | None = None


class CopyRequest(_Body):
    source: str
    destination: str


class CreateRequest(_Body):
    model: ModelName | None = None
    name: str | None = None
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str | None = None
    stream: bool = True
    modelfile: str | None = None


# -- OpenAI ------------------------------------------------------------------------------------------
class OAIContentPart(_Body):
    type: str
    text: str | None = None


class OAIMessage(_Body):
    role: str
    content: str | list[OAIContentPart] | None = None


class OAIJsonSchema(_Body):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class OAIResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: OAIJsonSchema | None = None


class OAIStreamOptions(_Body):
    include_usage: bool | None = None


class _OAISampling(_Body):
    model: ModelName
    stream: bool | None = False
    stream_options: OAIStreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # not in OpenAI's API, accepted as llama.cpp's and vLLM's servers do
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None


class ChatCompletionRequest(_OAISampling):
    messages: list[OAIMessage]
    max_completion_tokens: int | None = None
    response_format: OAIResponseFormat | None = None


class CompletionRequest(_OAISampling):
    prompt: str | list[str] = ""
    echo: bool | None = False
    suffix: str | None = None


class OAIEmbeddingRequest(_Body):
    model: ModelName
    input: str | list[str]
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = None
