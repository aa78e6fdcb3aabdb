"""The executor the headless runner builds (deadiff_runner/comfy_executor.py) runs prompts in the running
ComfyUI with that ComfyUI's default cache settings, as its main.py sets them up: the classic cache up
to ComfyUI 0.3.x, RAM-pressure caching with an active and an inactive headroom in later ones (whose
executor fails with KeyError 'ram_inactive' when built the old way)."""

from __future__ import annotations

import uuid

import pytest

from conftest import MessageSink, comfy_executor
from graphs import Graph


@pytest.fixture
def default_cache_args(comfy):
    """ComfyUI's args with the cache options a plain `python main.py` has (the harness itself runs with
    --cache-classic); restored afterwards."""
    from comfy.cli_args import parser, args

    defaults = parser.parse_args([])
    names = ("cache_classic", "cache_lru", "cache_none", "cache_ram")
    saved = {name: getattr(args, name) for name in names}
    for name in names:
        setattr(args, name, getattr(defaults, name))
    yield args
    for name, value in saved.items():
        setattr(args, name, value)


def test_default_cache_settings_follow_the_running_comfyui(comfy, default_cache_args):
    execution = comfy.execution
    cache_type, cache_args = comfy_executor.cache_settings(default_cache_args, execution, 16 * 1024)
    assert set(cache_args) == {"lru", "ram", "ram_inactive"}
    if isinstance(default_cache_args.cache_ram, list):  # --cache-ram ACTIVE INACTIVE: RAM pressure by default
        assert cache_type == execution.CacheType.RAM_PRESSURE
        assert cache_args["ram"] == 2.0 and cache_args["ram_inactive"] == 16.0  # 10 % (at least 2 GB), all RAM
    else:  # --cache-ram N: opt-in; the classic cache by default
        assert cache_type == execution.CacheType.CLASSIC
        assert cache_args["ram"] == 0


@pytest.mark.parametrize(
    "option, expected", [("cache_classic", "CLASSIC"), ("cache_none", "NONE"), ("cache_lru", "LRU")]
)
def test_cache_options_pick_the_cache_main_py_picks(comfy, default_cache_args, option, expected):
    setattr(default_cache_args, option, 5 if option == "cache_lru" else True)
    cache_type, _ = comfy_executor.cache_settings(default_cache_args, comfy.execution, 16 * 1024)
    if option == "cache_classic" and not isinstance(default_cache_args.cache_ram, list):
        expected = "CLASSIC"  # the default there anyway
    assert cache_type == getattr(comfy.execution.CacheType, expected)


def test_an_executor_with_the_default_settings_runs_a_prompt(comfy, default_cache_args):
    g = Graph()
    image = g.node("DEADiffTest_ImageFromSeed", seed=3, width=16, height=8, batch_size=1, channels=3)
    g.node("PreviewImage", images=image)
    valid = comfy.validate(g.prompt)
    assert valid[0], valid
    sink = MessageSink()
    executor = comfy_executor.prompt_executor(sink)
    executor.execute(g.prompt, str(uuid.uuid4()), extra_data={}, execute_outputs=valid[2])
    assert executor.success, [m for m in executor.status_messages if m[0] == "execution_error"]
    images = executor.history_result["outputs"]["2"]["images"]
    assert len(images) == 1 and images[0]["type"] == "temp"
    # the outputs are read back as the harness reads them, whichever the cache type
    assert comfy_executor.cached_outputs(executor, "1") is not None
