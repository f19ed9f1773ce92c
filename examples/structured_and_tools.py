"""JSON that fits a schema, and a forced tool call, from `engine serve` with the official openai client.

    engine serve --served-model-name smollm2 &
    python examples/structured_and_tools.py
"""

import json
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("URL", "http://127.0.0.1:8000") + "/v1", api_key="unused")
schema = {"type": "object", "additionalProperties": False, "required": ["city", "population"],
          "properties": {"city": {"type": "string", "maxLength": 30},
                         "population": {"type": "integer", "minimum": 0}}}
reply = client.chat.completions.create(
    model="smollm2", messages=[{"role": "user", "content": "Name a big city and its population."}],
    response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
    max_tokens=100,
)
print("JSON:", json.loads(reply.choices[0].message.content))

tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 30}}}}}]
reply = client.chat.completions.create(
    model="smollm2", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=tools, tool_choice="required", parallel_tool_calls=False, max_tokens=100,
)
call = reply.choices[0].message.tool_calls[0]
print("tool call:", call.function.name, json.loads(call.function.arguments), reply.choices[0].finish_reason)
