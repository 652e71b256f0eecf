"""Knowledge editing: the ``Edit`` type, requests, key statistics, target vectors and the
editors (ROME, MEMIT, AlphaEdit, fine-tuning), registered by name."""

from interp_edit.editing.ace import ACEConfig, ACERequest, ace
from interp_edit.editing.alphaedit import AlphaEditConfig, AlphaEditor, alphaedit
from interp_edit.editing.edit import Edit, LowRankDelta, SparseRowDelta, applied_edits
from interp_edit.editing.fine import FiNEConfig, fine
from interp_edit.editing.finetune import FTConfig, finetune
from interp_edit.editing.intattn import IntAttnConfig, intattn
from interp_edit.editing.mega import GatedLinearMap, MEGAConfig, mega
from interp_edit.editing.memit import MEMITConfig, memit
from interp_edit.editing.memit_csk import MEMITCSKConfig, memit_csk
from interp_edit.editing.registry import Editor, edit, editors, get_editor
from interp_edit.editing.requests import EditRequest, TokenizedRequest, prepare_requests
from interp_edit.editing.rome import ROMEConfig, rome
from interp_edit.editing.stats import key_statistics, second_moments
from interp_edit.editing.stats_npz import read_npz, write_npz
from interp_edit.editing.stats_provenance import KeyStatistics, StatsProvenance
from interp_edit.editing.targets import TargetConfig

__all__ = [
    "ACEConfig",
    "ACERequest",
    "ace",
    "AlphaEditConfig",
    "AlphaEditor",
    "Edit",
    "EditRequest",
    "Editor",
    "FTConfig",
    "FiNEConfig",
    "IntAttnConfig",
    "LowRankDelta",
    "GatedLinearMap",
    "MEGAConfig",
    "MEMITConfig",
    "MEMITCSKConfig",
    "ROMEConfig",
    "SparseRowDelta",
    "TargetConfig",
    "TokenizedRequest",
    "alphaedit",
    "applied_edits",
    "edit",
    "editors",
    "fine",
    "finetune",
    "get_editor",
    "intattn",
    "mega",
    "memit",
    "memit_csk",
    "prepare_requests",
    "rome",
    "second_moments",
    "key_statistics",
    "KeyStatistics",
    "StatsProvenance",
    "read_npz",
    "write_npz",
]
