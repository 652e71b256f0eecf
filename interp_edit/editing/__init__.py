"""Knowledge editing.

The core: :mod:`~interp_edit.editing.edit` (the ``Edit`` type), :mod:`~interp_edit.editing.requests`
(requests, prepared in one place), :mod:`~interp_edit.editing.targets` (k* and v* / z),
:mod:`~interp_edit.editing.closed_form` (the least-squares update), :mod:`~interp_edit.editing.spread`
(MEMIT's layer spreading), :mod:`~interp_edit.editing.config` (config dataclasses and presets),
:mod:`~interp_edit.editing.hooks` (activation-hook edits), :mod:`~interp_edit.editing.edit_token_choice`.
The editors: :mod:`interp_edit.editing.methods`, one file each, named in
:mod:`~interp_edit.editing.registry`. Key statistics: :mod:`interp_edit.statistics`. The core never
imports a method."""

from interp_edit.editing.edit import Edit, LowRankDelta, SparseRowDelta, applied_edits
from interp_edit.editing.methods.ace import ACEConfig, ACERequest, ace
from interp_edit.editing.methods.alphaedit import AlphaEditConfig, AlphaEditor, alphaedit
from interp_edit.editing.methods.emmet import EMMETConfig, emmet
from interp_edit.editing.methods.fine import FiNEConfig, fine
from interp_edit.editing.methods.finetune import FTConfig, finetune
from interp_edit.editing.methods.grace import GRACEConfig, grace
from interp_edit.editing.methods.intattn import IntAttnConfig, intattn
from interp_edit.editing.methods.kn import KNConfig, kn
from interp_edit.editing.methods.mega import GatedLinearMap, MEGAConfig, mega
from interp_edit.editing.methods.memit import MEMITConfig, memit
from interp_edit.editing.methods.memit_csk import MEMITCSKConfig, memit_csk
from interp_edit.editing.methods.pmet import PMETConfig, pmet
from interp_edit.editing.methods.rome import ROMEConfig, rome
from interp_edit.editing.methods.ultraedit import UltraEditConfig, UltraEditor, UltraEditState, ultraedit
from interp_edit.editing.methods.wise import WISEConfig, wise
from interp_edit.editing.registry import Editor, edit, editors, get_editor
from interp_edit.editing.requests import EditRequest, TokenizedRequest, prepare_requests
from interp_edit.editing.targets import TargetConfig
from interp_edit.statistics import KeyStatistics, StatsProvenance, key_statistics, read_npz, second_moments, write_npz

__all__ = [
    "ACEConfig",
    "ACERequest",
    "ace",
    "AlphaEditConfig",
    "AlphaEditor",
    "EMMETConfig",
    "Edit",
    "EditRequest",
    "Editor",
    "FTConfig",
    "GRACEConfig",
    "FiNEConfig",
    "IntAttnConfig",
    "KNConfig",
    "LowRankDelta",
    "GatedLinearMap",
    "MEGAConfig",
    "MEMITConfig",
    "PMETConfig",
    "MEMITCSKConfig",
    "ROMEConfig",
    "WISEConfig",
    "UltraEditConfig",
    "UltraEditState",
    "UltraEditor",
    "SparseRowDelta",
    "TargetConfig",
    "TokenizedRequest",
    "alphaedit",
    "applied_edits",
    "edit",
    "editors",
    "emmet",
    "fine",
    "finetune",
    "get_editor",
    "grace",
    "intattn",
    "kn",
    "mega",
    "memit",
    "pmet",
    "memit_csk",
    "prepare_requests",
    "rome",
    "wise",
    "ultraedit",
    "second_moments",
    "key_statistics",
    "KeyStatistics",
    "StatsProvenance",
    "read_npz",
    "write_npz",
]
