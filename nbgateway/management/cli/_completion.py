"""``nbgateway-admin completion bash|zsh``: shell completion scripts.

The script is generated from the argument parser itself, so it always knows
every command, action and option (hidden aliases are left out).  It is
static: no Python runs while completing.  zsh uses the same function through
``bashcompinit``.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO


def _visible_subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            shown = {a.dest for a in action._choices_actions}
            return {n: p for n, p in action.choices.items() if n in shown}
    return {}


def command_tree(parser: argparse.ArgumentParser, path: str = "") -> dict[str, tuple[list[str],
                                                                                      list[str]]]:
    """``{"peers create": (words, value_options)}`` for every command path:
    the completions offered there and the options that take a value."""
    subs = _visible_subcommands(parser)
    options, valued = [], []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        for opt in action.option_strings:
            if opt.startswith("--"):
                options.append(opt)
                if action.nargs != 0:
                    valued.append(opt)
        if action.choices and not action.option_strings and not subs:
            options.extend(str(c) for c in action.choices)
    tree = {path: (sorted(subs) + sorted(options), sorted(valued))}
    for name, sub in subs.items():
        tree.update(command_tree(sub, f"{path} {name}".strip()))
    return tree


def bash_script(parser: argparse.ArgumentParser, prog: str = "nbgateway-admin") -> str:
    tree = command_tree(parser)
    func = "_" + prog.replace("-", "_")
    valued = sorted({opt for _, opts in tree.values() for opt in opts})
    cases = "\n".join(f'        "{path}") words="{" ".join(words)}" ;;'
                      for path, (words, _) in sorted(tree.items()))
    known = "|".join(sorted(tree))
    return f"""# {prog} completion for bash (and zsh through bashcompinit).
# Load it with:  source <({prog} completion bash)
{func}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word cand i words=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in
            {"|".join(valued) or "--"}) ((i++)) ;;
            -*) ;;
            *) cand="${{path:+$path }}$word"
               case "|{known}|" in *"|$cand|"*) path="$cand" ;; esac ;;
        esac
    done
    case "$path" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F {func} {prog}
"""


def zsh_script(parser: argparse.ArgumentParser, prog: str = "nbgateway-admin") -> str:
    return (f"# {prog} completion for zsh.  Load it with:  source <({prog} completion zsh)\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + bash_script(parser, prog))


def cmd_completion(_client: Any, args: argparse.Namespace, out: TextIO) -> None:
    from nbgateway.management.cli._main import build_parser

    parser = build_parser()
    out.write(bash_script(parser) if args.shell == "bash" else zsh_script(parser))


def register(cmd: Any) -> None:
    c = cmd.add("completion", "print a shell completion script (bash or zsh)",
                func=cmd_completion, offline=True,
                example=["source <(nbgateway-admin completion bash)      # in ~/.bashrc",
                         "source <(nbgateway-admin completion zsh)       # in ~/.zshrc",
                         "nbgateway-admin completion bash > /etc/bash_completion.d/"
                         "nbgateway-admin"])
    c.add_argument("shell", choices=["bash", "zsh"], help="the shell")
