"""The fast tier: which tests `-m fast` (equivalently `-m "not slow"`) runs, as a pytest plugin.

A quick loop between one test file and the whole suite: the core math, every node of the pack once
inside the real in-process ComfyUI, and one real-server test, in under 3 minutes on 2 idle cores.
Everything else (the examples end to end, the runner's subprocesses, the bad-file corpus against the
server, the unusual-input graphs, the soak, the browser) is marked `slow` here and runs in the full
suite (`bash scripts/test.sh`, what .ci/run runs).

Loaded by `-p tiers` in pyproject.toml's addopts. A test file not listed below is slow; a file listed
with a set of names is fast for those tests only. Keep the tier small: add a test here only if it is
quick and checks something the rest of the tier does not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# file name -> None (every test in it) or the names of its fast tests (parametrized ids included)
FAST: dict[str, set[str] | None] = {
    # the core math, no ComfyUI
    "test_core_checkpoint.py": None,
    "test_core_tokens.py": None,
    "test_core_encoders.py": None,
    "test_core_load_progress.py": None,
    "test_core_preprocess_options.py": {"test_options_match_the_plain_reference"},
    "test_hostile_files.py": {"test_hostile_file_is_refused_by_name_and_nothing_runs"},
    "test_properties.py": None,
    # one site's patch against the reference, in the in-process ComfyUI
    "test_site_patch.py": None,
    # every node once, in the in-process ComfyUI: registered with tooltips; loader, both encoders and
    # Apply against the reference; two Apply nodes; mix, save/load, routing nodes; another pack's patch
    "test_tiny_models.py": {"test_pack_nodes_are_registered_with_tooltips_and_descriptions"},
    "test_apply.py": {"test_prediction_matches_reference[True-True-1.0]", "test_two_apply_nodes_compose"},
    "test_beyond_paper.py": {
        "test_mix_nodes_weighted_sum_and_concatenate_through_the_executor",
        "test_save_and_load_tokens_through_the_executor",
        "test_custom_routing_at_the_sites",
        "test_two_masked_applies_give_two_regional_styles",
    },
    "test_combining_packs.py": {"test_both_orders_give_the_same_prediction_as_the_reference"},
    "test_context_windows.py": {"test_site_follows_the_window_indices"},
    "test_encoder_options.py": {"test_resize_mode_and_mask_reach_the_encoder_and_change_the_tokens"},
    "test_download_node.py": {"test_downloads_on_run_with_progress_then_only_loads"},
    "test_v3_nodes.py": {"test_saved_workflow_validates_and_runs_with_its_values"},
    "test_workflow_compat.py": None,
    # one test against the real server (main.py in a subprocess)
    "test_server.py": {"test_object_info_lists_the_nodes_with_tooltips"},
}


def is_fast(item: pytest.Item) -> bool:
    names = FAST.get(Path(str(item.fspath)).name, ())
    if names is None:
        return True
    return item.name in names or item.originalname in names


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") is None and is_fast(item):
            item.add_marker(pytest.mark.fast)
        elif item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
