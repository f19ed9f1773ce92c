"""Continuous-batching scheduler and KV block manager: pure Python, no torch.

The one place that decides what runs in a step and which KV blocks each request holds. This folder
installs as ``engine.scheduler`` (pyproject.toml's ``package-dir``): the distribution's one import
root is ``engine``.
"""

from .block_manager import BlockManager
from .block_pool import BlockPool, KVBlock
from .config import RequestRejected, SchedulerConfig
from .kv_groups import KVCacheGroups
from .output import ScheduledRequest, SchedulerOutput
from .request import FinishReason, Request, RequestStatus, StopConditions
from .scheduler import Scheduler

__all__ = [
    "BlockManager",
    "BlockPool",
    "FinishReason",
    "KVBlock",
    "KVCacheGroups",
    "Request",
    "RequestRejected",
    "RequestStatus",
    "ScheduledRequest",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "StopConditions",
]
