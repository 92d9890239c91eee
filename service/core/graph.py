"""A resolved dependency tree rendered as the `extensions.graph` reply: JSON, Graphviz DOT or Mermaid."""

from __future__ import annotations

from ..contract.messages import Graph, GraphEdge, GraphNode, GraphText
from .dependencies import DependencyTree


def to_graph(tree: DependencyTree) -> Graph:
    nodes = tuple(
        GraphNode(id=info.key, extension_type=info.extension_type, name=info.name, version=info.version)
        for info in tree.order
    )
    edges = tuple(GraphEdge(from_=a, to=b) for a, b in tree.edges)
    return Graph(nodes=nodes, edges=edges, order=tuple(n.id for n in nodes))


def to_dot(graph: Graph) -> GraphText:
    lines = ["digraph extensions {", "  rankdir=LR;", "  node [shape=box];"]
    lines += [f'  "{n.id}" [label="{n.extension_type.value}\\n{n.name} {n.version}"];' for n in graph.nodes]
    lines += [f'  "{e.from_}" -> "{e.to}";' for e in graph.edges]
    lines.append("}")
    return GraphText(text="\n".join(lines) + "\n")


def to_mermaid(graph: Graph) -> GraphText:
    ids = {n.id: f"n{i}" for i, n in enumerate(graph.nodes)}
    lines = ["graph LR"]
    lines += [f'  {ids[n.id]}["{n.extension_type.value} {n.name} {n.version}"]' for n in graph.nodes]
    lines += [f"  {ids[e.from_]} --> {ids[e.to]}" for e in graph.edges]
    return GraphText(text="\n".join(lines) + "\n")


def render(tree: DependencyTree, format: str) -> Graph | GraphText:
    graph = to_graph(tree)
    if format == "dot":
        return to_dot(graph)
    if format == "mermaid":
        return to_mermaid(graph)
    return graph
