"""engine on Ray Serve: two replicas of version 1, then a canary of version 2 taking 20% of the traffic.

    pip install 'engine[ray]'
    python examples/ray_serve.py [MODEL_V1] [MODEL_V2]      # default: the default model, both versions

Then point any OpenAI client at http://127.0.0.1:8000/v1 (``system_fingerprint`` says which version
answered). Ctrl-C stops Ray.
"""

import sys
import time

from engine.api.local_ray import init_ray

PORT = 8000


def main() -> None:
    v1 = sys.argv[1] if len(sys.argv) > 1 else None
    v2 = sys.argv[2] if len(sys.argv) > 2 else v1
    init_ray()  # a local Ray on 127.0.0.1, or the cluster RAY_ADDRESS names
    import ray
    from ray import serve

    from engine.api.ray_serve import ServedModel, canary_apps

    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    stable = ServedModel({"model": v1, "max_model_len": 2048}, "smollm2", model_version="1")
    canary = ServedModel({"model": v2, "max_model_len": 2048}, "smollm2", model_version="2")
    for name, (app, prefix) in canary_apps(stable, canary, 0.2, f"http://127.0.0.1:{PORT}", num_replicas=2).items():
        serve.run(app, name=name, route_prefix=prefix)
    print(f"serving at http://127.0.0.1:{PORT}/v1 (80% version 1, 20% version 2); Ctrl-C to stop")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
