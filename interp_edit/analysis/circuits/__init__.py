"""Circuits (issue 30): the edge-level graph of a model (:mod:`.graph`), edge scores — exact edge
patching, EAP, EAP-IG over inputs or activations, clean–corrupted (:mod:`.scores`, built on the
hooked forwards of :mod:`.engine`) — and circuits: top-n / greedy edge selection and
faithfulness curves (:mod:`.circuit`; figures in :mod:`.figure`), path patching
(:mod:`.path`), and the circuit an edit reroutes (:mod:`.diff`)."""

from interp_edit.analysis.circuits.circuit import CircuitResult, faithfulness_curve, find_circuit, select_edges
from interp_edit.analysis.circuits.diff import CircuitDiffResult, circuit_diff
from interp_edit.analysis.circuits.graph import EdgeGraph, Receiver, Sender, edge_graph
from interp_edit.analysis.circuits.path import PathPatchingResult, path_patch
from interp_edit.analysis.circuits.scores import EdgeScores, edge_scores

__all__ = ["CircuitDiffResult", "CircuitResult", "EdgeGraph", "EdgeScores", "Receiver", "Sender", "circuit_diff",
           "edge_graph", "edge_scores", "PathPatchingResult", "faithfulness_curve", "find_circuit", "path_patch", "select_edges"]
