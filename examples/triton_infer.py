"""Call `engine serve` through the KServe Open Inference Protocol with tritonclient.

    engine serve --served-model-name smollm2 &
    python examples/triton_infer.py
"""

import numpy as np
import tritonclient.http as httpclient

client = httpclient.InferenceServerClient("127.0.0.1:8000")
assert client.is_server_ready() and client.is_model_ready("smollm2")

prompts = np.array([b"The sky is", b"Water boils at"], dtype=np.object_)
text_input = httpclient.InferInput("text_input", list(prompts.shape), "BYTES")
text_input.set_data_from_numpy(prompts)
result = client.infer("smollm2", [text_input], parameters={"max_tokens": 12, "temperature": 0})
for prompt, text in zip(prompts, result.as_numpy("text_output")):
    print(prompt.decode(), "->", text.decode() if isinstance(text, bytes) else text)
