"""ComfyUI's prompt executor, built the way the running ComfyUI's own main.py builds it.

main.py is a script (importing it starts a server), so its executor set-up cannot be called; this
module repeats it, for the headless runner and the test harness. What changed between ComfyUI
releases is recognised from ComfyUI's own command-line arguments, never from its version string:

- up to ComfyUI 0.3.x, `--cache-ram` is one optional number (0 = off) and the classic cache is the
  default; the executor reads `cache_args["lru"]` and `cache_args["ram"]`;
- later ComfyUIs (0.33 among them) make RAM-pressure caching the default: `--cache-ram` takes up to two
  numbers (active and inactive headroom in GB, by default derived from the machine's RAM), and the
  executor also reads `cache_args["ram_inactive"]` (a KeyError without it).
"""

from __future__ import annotations

import asyncio
import inspect


def cache_settings(args, execution, total_ram_mb: float):
    """(cache type, cache_args) for `PromptExecutor`, as main.py's prompt_worker derives them from `args`."""
    CacheType = execution.CacheType
    if isinstance(args.cache_ram, (list, tuple)):
        # RAM-pressure caching is the default; --cache-ram [ACTIVE [INACTIVE]] sets its two headrooms
        ram = inactive = 0.0
        if not args.cache_classic and not args.cache_none and args.cache_lru <= 0:
            ram = min(10.0, max(2.0, total_ram_mb * 0.10 / 1024.0))
            inactive = min(128.0, total_ram_mb / 1024.0)
            if len(args.cache_ram) > 0:
                ram = args.cache_ram[0]
            if len(args.cache_ram) > 1:
                inactive = args.cache_ram[1]
        cache_type = CacheType.RAM_PRESSURE
        if args.cache_classic:
            cache_type = CacheType.CLASSIC
        elif args.cache_lru > 0:
            cache_type = CacheType.LRU
        elif args.cache_none:
            cache_type = CacheType.NONE
    else:
        # the classic cache is the default; --cache-ram N (GB of headroom) opts into RAM-pressure caching
        ram = args.cache_ram
        inactive = 0.0  # not read by these executors; passed so that one dict fits every executor
        cache_type = CacheType.CLASSIC
        if args.cache_lru > 0:
            cache_type = CacheType.LRU
        elif args.cache_ram > 0:
            cache_type = CacheType.RAM_PRESSURE
        elif args.cache_none:
            cache_type = CacheType.NONE
    return cache_type, {"lru": args.cache_lru, "ram": ram, "ram_inactive": inactive}


def prompt_executor(server):
    """A `PromptExecutor` reporting to `server` (anything with send_sync and client_id), configured from
    ComfyUI's parsed command-line args as main.py configures the one behind its queue."""
    import comfy.model_management
    import execution
    from comfy.cli_args import args

    cache_type, cache_args = cache_settings(args, execution, comfy.model_management.total_ram)
    return execution.PromptExecutor(server, cache_type=cache_type, cache_args=cache_args)


def cached_outputs(executor, node_id: str):
    """What the executor's output cache holds for `node_id` after a run (None if nothing).

    ComfyUI has no public way to read a node's raw (non-UI) outputs after a run; this reads the
    executor's output cache, as the executor itself does. Its `get` became a coroutine in later
    ComfyUIs, so an awaitable result is awaited."""
    value = executor.caches.outputs.get(node_id)
    if inspect.isawaitable(value):
        value = asyncio.run(value)
    return value
