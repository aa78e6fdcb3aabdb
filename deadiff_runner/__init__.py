"""deadiff_runner: run the pack's example workflows headless through ComfyUI (`deadiff-run`).

Not part of the node pack (ComfyUI never imports it). `python -m deadiff_runner.cli --help`.
"""
