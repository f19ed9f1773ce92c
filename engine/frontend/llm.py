"""The offline facade: ``LLM(...).generate(prompts)`` and ``.chat(messages)`` with a progress bar."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any, Optional, Sequence, Union

from tqdm.auto import tqdm

from engine.config import EngineConfig
from engine.processing.input_processor import PromptType
from engine.processing.outputs import RequestOutput
from engine.sampling.sampling_params import RequestOutputKind, SamplingParams
from engine.step.llm_engine import LLMEngine

Messages = list[dict[str, Any]]
# One prompt of a call: (prompt, its token ids if already known), or why it was rejected.
_Item = Union[tuple[PromptType, Optional[list[int]]], ValueError]


class InvalidPromptError(ValueError):
    """Some prompts of a ``generate`` call were rejected; the others ran to completion.

    ``outputs`` holds one entry per prompt of the call: the ``RequestOutput`` of a prompt that
    ran, ``None`` for one that was rejected. ``errors`` maps each rejected index to its reason.
    """

    def __init__(self, errors: dict[int, ValueError], outputs: list[RequestOutput | None]) -> None:
        self.errors = errors
        self.outputs = outputs
        detail = "; ".join(f"prompt {i}: {err}" for i, err in errors.items())
        super().__init__(f"{len(errors)} of {len(outputs)} prompts were rejected ({detail})")


class LLM:
    """Load a model once, then generate for batches of prompts with continuous batching.

    ``LLM()`` loads the default model (SmolLM2-135M-Instruct). Keywords are ``EngineConfig``'s.
    """

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        self.engine = LLMEngine(EngineConfig.from_kwargs(model, **kwargs))
        self._ids = itertools.count()

    def shutdown(self) -> None:
        """Stop the tensor-parallel worker processes, if any (they also end with this process)."""
        self.engine.shutdown()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """One ``RequestOutput`` per prompt, in order.

        A prompt the engine cannot take (too long, empty) does not stop the others: they run to
        completion and then ``InvalidPromptError`` (a ``ValueError``) reports the rejected ones.
        """
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        return self._run([(prompt, None) for prompt in prompts], sampling_params, use_tqdm)

    def chat(
        self,
        messages: Messages | Sequence[Messages],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate replies to conversations, each rendered with the model's chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        items: list[_Item] = []
        for conversation in conversations:
            try:
                items.append(self.engine.input_processor.render_chat(conversation))
            except ValueError as err:  # rejected like a bad prompt: the other conversations still run
                items.append(err)
        return self._run(items, sampling_params, use_tqdm)

    def _run(self, items: list[_Item], sampling_params, use_tqdm: bool) -> list[RequestOutput]:
        # only the finished outputs are returned, so the engine builds nothing before them
        params = [replace(sp, output_kind=RequestOutputKind.FINAL_ONLY) for sp in _per_prompt(sampling_params, len(items))]
        index_of: dict[str, int] = {}
        errors: dict[int, ValueError] = {}
        outputs: list[RequestOutput | None] = [None] * len(items)
        try:
            for index, (item, sp) in enumerate(zip(items, params)):
                if isinstance(item, ValueError):
                    errors[index] = item
                    continue
                request_id = str(next(self._ids))
                try:
                    self.engine.add_request(request_id, item[0], sp, prompt_token_ids=item[1])
                except ValueError as err:
                    errors[index] = err
                    continue
                index_of[request_id] = index
            with tqdm(total=len(index_of), desc="generate", unit="req", disable=not use_tqdm) as bar:
                while self.engine.has_unfinished_requests():
                    for out in self.engine.step():
                        if out.finished:
                            outputs[index_of[out.request_id]] = out
                            bar.update(1)
        finally:  # an interrupt or error must not leave this call's requests holding blocks
            for request_id, index in index_of.items():
                if outputs[index] is None:
                    self.engine.abort(request_id)
        self.engine.check_invariants()
        if errors:
            raise InvalidPromptError(errors, outputs)
        return outputs


def _per_prompt(sampling_params, count: int) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()] * count
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * count
    params = list(sampling_params)
    if len(params) != count:
        raise ValueError(f"sampling_params has {len(params)} entries for {count} prompts; give one or one per prompt")
    return params
