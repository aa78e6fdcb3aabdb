"""Build ComfyUI API-format prompts in tests without hand-numbering nodes."""

from __future__ import annotations


class Graph:
    def __init__(self):
        self.prompt: dict = {}

    def node(self, class_type: str, **inputs) -> "Node":
        node_id = str(len(self.prompt) + 1)
        self.prompt[node_id] = {
            "class_type": class_type,
            "inputs": {k: (v.output(0) if isinstance(v, Node) else v) for k, v in inputs.items()},
        }
        return Node(node_id)


class Node:
    def __init__(self, node_id: str):
        self.id = node_id

    def output(self, index: int) -> list:
        return [self.id, index]

    def __getitem__(self, index: int) -> list:
        return self.output(index)
