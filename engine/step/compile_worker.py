"""The process that compiles decode graphs while the engine serves: ``python -m engine.step.compile_worker JOB``.

``JOB`` holds a list of ``LayerGraph`` (meta-device layers, no weights). Each is compiled into its
package in turn, and its index printed on a line of its own once the package is in place, so the
engine can load it at once. A process of its own keeps inductor's tracing and code generation off
the serving process's interpreter, and runs at a lower priority so that serving keeps the CPU.
"""

from __future__ import annotations

import os
import sys

import torch

from engine.kernels import cpu as cpu_kernels


def main(job: str) -> int:
    if hasattr(os, "nice"):
        os.nice(10)
    cpu_kernels.load()  # builds the C++ attention the graphs call, if no process has yet
    graphs = torch.load(job, weights_only=False)
    for index, graph in enumerate(graphs):
        if not graph.path.is_file():  # another process may have compiled it meanwhile
            graph.compile()
        print(index, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
