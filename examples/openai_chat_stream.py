"""Stream a chat completion from `engine serve` with the official openai client.

    engine serve --served-model-name smollm2 &
    python examples/openai_chat_stream.py
"""

import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("URL", "http://127.0.0.1:8000") + "/v1", api_key="unused")
stream = client.chat.completions.create(
    model="smollm2",
    messages=[{"role": "user", "content": "Write a haiku about paged attention."}],
    max_tokens=64,
    temperature=0.7,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    elif chunk.usage:
        print(f"\n[{chunk.usage.prompt_tokens} prompt + {chunk.usage.completion_tokens} completion tokens]")
