"""Call `engine serve` through the Open Inference Protocol over gRPC with tritonclient.grpc: a batch with
ModelInfer, then a generation streamed piece by piece with ModelStreamInfer.

    engine serve --served-model-name smollm2 --grpc-port 8001 &
    python examples/triton_grpc.py
"""

import queue

import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient("127.0.0.1:8001")  # headers={"authorization": "Bearer KEY"} with --api-key
assert client.is_server_ready() and client.is_model_ready("smollm2")


def text_input(*prompts: str) -> list:
    tensor = grpcclient.InferInput("text_input", [len(prompts)], "BYTES")
    tensor.set_data_from_numpy(np.array([p.encode() for p in prompts], dtype=np.object_))
    return [tensor]


result = client.infer("smollm2", text_input("The sky is", "Water boils at"),
                      parameters={"max_tokens": 12, "temperature": 0})
for text in result.as_numpy("text_output"):
    print(text.decode())

pieces: queue.Queue = queue.Queue()
client.start_stream(callback=lambda result, error: pieces.put((result, error)))
client.async_stream_infer("smollm2", text_input("Write a haiku about the sea."), parameters={"max_tokens": 48})
while True:
    result, error = pieces.get()
    if error is not None:
        raise error
    print(result.as_numpy("text_output")[0].decode(), end="", flush=True)
    if "finish_reason" in result.get_response().parameters:  # the last piece
        break
print()
client.stop_stream()
