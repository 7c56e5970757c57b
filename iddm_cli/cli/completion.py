"""Typer's zsh completion script, made to work when zsh autoloads it from ``fpath``.

Typer's script only registers its function (``compdef``) when it runs. Autoloaded by compinit, that run is the
first TAB, which then completes nothing, and every later TAB runs the file again and only registers once more. The
fixed script, when autoloaded, makes ``_iddm`` the completion function itself and completes at once; sourced, it
registers as before. ``iddm --install-completion``, ``--show-completion``,
``_IDDM_COMPLETE=source_zsh`` and the shipped ``completions/_iddm`` (written by ``scripts/gen_completions.py``) all
give this script.
"""

from __future__ import annotations

from typer import _completion_classes, _completion_shared

REGISTER = "compdef %(complete_func)s %(prog_name)s\n"
REGISTER_OR_COMPLETE = """\
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  # autoloaded from fpath by compinit, on the first TAB: _%(prog_name)s becomes the completion itself (else every
  # later TAB would run this file again and only register), then complete now
  _%(prog_name)s() { %(complete_func)s "$@"; }
  %(complete_func)s "$@"
else
  # sourced: register the function for later
  compdef %(complete_func)s %(prog_name)s
fi
"""


def fix_zsh_script() -> bool:
    """Give Typer the fixed zsh template; False (Typer's left as it is) when its template is not the one known."""
    template = _completion_shared.COMPLETION_SCRIPT_ZSH
    if not template.endswith(REGISTER):
        return False
    fixed = template[: -len(REGISTER)] + REGISTER_OR_COMPLETE
    _completion_shared._completion_scripts["zsh"] = fixed
    _completion_classes.ZshComplete.source_template = fixed
    return True
