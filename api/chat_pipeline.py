"""One path from a conversation to a running request, for every chat API (OpenAI Chat Completions and
Responses, Anthropic Messages).

Each API translates its own request into a ``ChatQuery``: messages as chat templates read them, OpenAI
function tools, a tool choice, the output constraint it asks for. ``ChatPipeline.prepare`` renders the
template, checks the engine's limits and compiles the constraint (or the grammar that forces tool
calls); the result's ``new_output`` parses what the model writes into reasoning, content and tool calls
through the same parsers for all three APIs, streamed or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from engine import RequestOutputKind, SamplingParams, StructuredOutputsParams

from .chat_output import ChatOutput
from .errors import APIError
from .output_blocks import OutputBlocks
from .reasoning import END as REASONING_END
from .reasoning import ReasoningParser, prompt_leaves_thinking_open
from .serving import Serving
from .tool_parsers import PARSERS, ToolParser, parser_for_template


@dataclass(frozen=True)
class ChatQuery:
    messages: list[dict[str, Any]]  # as chat templates read them (see template_tool_call)
    tools: list[dict] | None = None  # OpenAI function tools, as checked_tools accepts them
    tool_choice: Literal["none", "auto", "required", "function"] | None = None  # None: auto with tools
    tool_name: str | None = None  # the function that tool_choice "function" forces
    parallel_tool_calls: bool = True
    constraint: tuple[StructuredOutputsParams, str] | None = None  # what the client asked for, and its field
    max_tokens: int | None = None  # None: up to the end of the context
    n: int = 1
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    add_generation_prompt: bool = True
    continue_final_message: bool = False


@dataclass(frozen=True)
class ChatFields:
    """How an API names the parts of a ``ChatQuery``, for its error messages."""

    messages: str = "messages"
    tool_choice: str = "tool_choice"


@dataclass(frozen=True)
class PreparedChat:
    prompt: str
    token_ids: list[int]
    max_tokens: int
    constraint: StructuredOutputsParams | None
    tool_parser: ToolParser | None
    split_reasoning: bool

    def new_output(self) -> ChatOutput:
        """A parser of one output of this prompt (one per choice)."""
        return ChatOutput(ReasoningParser(self.prompt) if self.split_reasoning else None, self.tool_parser)

    def output_blocks(self, whole_text: str | None = None) -> OutputBlocks:
        """The blocks of one output: empty, for a stream to feed, or made of ``whole_text`` (a reply not streamed)."""
        blocks = OutputBlocks(self.new_output())
        if whole_text is not None:
            blocks.feed(whole_text, final=True)
        return blocks

    def sampling_params(self, stream: bool, **given: Any) -> SamplingParams:
        """Sampling for this prompt: its max_tokens and constraint, only new text per output when ``stream``, and
        the fields the client gave (None: the engine's default). ``InvalidSamplingParam`` names one out of range."""
        return SamplingParams(max_tokens=self.max_tokens, structured_outputs=self.constraint,
                              output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
                              **{name: value for name, value in given.items() if value is not None})


@dataclass(frozen=True)
class RenderedChat:
    prompt: str
    token_ids: list[int]
    tool_parser: ToolParser | None
    forced: StructuredOutputsParams | None  # the grammar that tool_choice "required" or a named function asks for


class ChatPipeline(Serving):
    def render(self, query: ChatQuery, fields: ChatFields = ChatFields()) -> RenderedChat:
        """The prompt the chat template makes of the query, with its tools (what count_tokens counts)."""
        tools, parser, forced = self._tool_plan(query, fields.tool_choice)
        template_kwargs = {**query.template_kwargs, **({"tools": tools} if tools else {})}
        try:
            prompt, token_ids = self.engine.render_chat(
                query.messages, add_generation_prompt=query.add_generation_prompt,
                continue_final_message=query.continue_final_message, **template_kwargs)
        except ValueError as err:  # messages the chat template cannot render: the request's fault
            raise APIError(str(err), param=fields.messages) from None
        return RenderedChat(prompt, token_ids, parser, forced)

    async def prepare(self, query: ChatQuery, fields: ChatFields = ChatFields()) -> PreparedChat:
        """The rendered prompt within the engine's limits, and its output constraint compiled."""
        rendered = self.render(query, fields)
        prompt, token_ids = rendered.prompt, rendered.token_ids
        # without max_tokens, the output may fill the context, and needs room for one token
        self.check_limits(len(token_ids), query.n, query.max_tokens or 1, fields.messages)
        max_tokens = query.max_tokens or self.engine.max_model_len - len(token_ids)
        if query.constraint is not None and rendered.forced is not None:
            raise APIError(f"{query.constraint[1]} cannot be combined with a tool_choice that forces tool calls",
                           param=query.constraint[1])
        constraint, constraint_field = query.constraint or (rendered.forced, fields.tool_choice)
        # where the prompt leaves a <think> open, the thinking stays free and the constraint starts after
        # it; otherwise the constraint holds from the first token (a model that would open <think> cannot)
        split_reasoning = bool(self.options.reasoning_parser)
        if constraint is not None:
            if split_reasoning and prompt_leaves_thinking_open(prompt):
                constraint = replace(constraint, begin_after=REASONING_END)
            constraint = await self.compile_constraint(constraint, constraint_field)
        return PreparedChat(prompt, token_ids, max_tokens, constraint, rendered.tool_parser, split_reasoning)

    def _tool_plan(self, query: ChatQuery, choice_field: str) -> tuple[list[dict] | None, ToolParser | None,
                                                                     StructuredOutputsParams | None]:
        """The tools the template shows, the parser of the output's calls, and the grammar forcing calls
        (tool_choice "required" or a named function)."""
        choice = query.tool_choice or ("auto" if query.tools else "none")
        if choice == "none":
            return None, None, None
        if not query.tools:
            raise APIError("tool_choice needs tools", param=choice_field)
        parser = PARSERS[self.options.tool_call_parser or parser_for_template(self.tokenizer.chat_template)]()
        if choice == "auto":
            return query.tools, parser, None
        if choice == "required":
            return query.tools, parser, parser.forced_grammar(query.tools, parallel=query.parallel_tool_calls)
        chosen = [tool for tool in query.tools if tool["function"]["name"] == query.tool_name]
        if not chosen:
            raise APIError(f"tool_choice names {query.tool_name!r}, which is not one of the tools",
                           param=choice_field)
        return query.tools, parser, parser.forced_grammar(chosen, parallel=False)


def function_tool(name: Any, parameters: Any, description: Any, field: str, parameters_key: str) -> dict:
    """A tool as chat templates and our tool parsers read it (OpenAI's chat shape), from its parts;
    a 400 naming ``field`` (or its ``parameters_key``) for a missing name or a schema that is not an object."""
    if not isinstance(name, str) or not name:
        raise APIError("a function tool needs a name (a non-empty string)", param=field)
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise APIError(f"a tool's {parameters_key} must be a JSON schema (an object)",
                       param=f"{field}.{parameters_key}")
    described = {"description": description} if isinstance(description, str) else {}
    return {"type": "function", "function": {"name": name, **described, "parameters": parameters}}


def template_tool_call(call_id: str | None, name: Any, arguments: Any, field: str) -> dict:
    """A tool call of an earlier assistant turn as chat templates read it: arguments as an object, not
    JSON text."""
    if not isinstance(name, str):
        raise APIError("a tool call needs the function's name", param=field)
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            raise APIError("a tool call's arguments must be JSON", param=f"{field}.arguments") from None
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def joined_text(content: Any, field: str, part_types: tuple[str, ...]) -> str:
    """A string, or a list of text parts (of ``part_types``, each with its ``text``), as one text; a 400
    naming the first part that is not text (an image, a file)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError("content must be a string or a list of text parts", param=field)
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in part_types or not isinstance(part.get("text"), str):
            raise APIError(f"content parts of type {kind!r} are not supported here (only {list(part_types)})",
                           param=f"{field}.{index}")
        texts.append(part["text"])
    return "".join(texts)
