"""`charnn train`'s model options, built from the model registry (charnn.models.registry): every registered
kind's TrainFlags, once each, as Typer options in the "Model" panel (or "Pairs (--pairs)" for flags only
--pairs kinds take). The command receives them as keyword arguments; which of them the run's kind takes is
the registry's check (charnn.training.run.train_configs)."""

from __future__ import annotations

import inspect
from typing import Annotated, Callable, Optional

import typer

from charnn.models import registry


def with_model_flags(command: Callable, model_panel: str, pairs_panel: str, before: str,
                     pairs_before: str) -> Callable:
    """`command`, whose signature ends in **model_flags, with one option per registered flag (and --kind)
    inserted before its parameter `before` (those only --pairs kinds take: before `pairs_before`)."""
    registry.load_plugins()  # kinds from other packages bring their flags
    sig = inspect.signature(command, eval_str=True)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    pairs_only = {name for name, (_, kinds) in registry.flag_table().items() if all(k.serves == "pairs" for k in kinds)}
    for panel, at_name, names in ((pairs_panel, pairs_before, pairs_only), (model_panel, before, None)):
        at = next(i for i, p in enumerate(params) if p.name == at_name)
        params[at:at] = ([] if names else [_kind_option(panel)]) + [
            _option(flag, panel, kinds) for name, (flag, kinds) in registry.flag_table().items()
            if (name in pairs_only) == (names is not None)]
    command.__signature__ = sig.replace(parameters=params)
    command.__annotations__ = {**command.__annotations__, **{p.name: p.annotation for p in params}}
    return command


def _kind_option(panel: str) -> inspect.Parameter:
    names = ", ".join(registry.names())
    info = typer.Option(help=f"Model kind: {names}. Default: the kind that takes --cell (and --pairs).",
                        show_default="by --cell", rich_help_panel=panel)
    return inspect.Parameter("kind", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                             annotation=Annotated[Optional[str], info])


def _option(flag: registry.TrainFlag, panel: str, kinds) -> inspect.Parameter:
    help = flag.help
    if flag.name == "cell":  # every kind's cells, as --cell picks the kind
        cells = dict.fromkeys(c for k in registry.kinds() for c in k.cells)
        help = f"Recurrent cell: {', '.join(cells)}."
    elif len(kinds) < len([k for k in registry.kinds() if k.serves == kinds[0].serves]):
        help += f" ({', '.join(k.name for k in kinds)} models)"
    info = typer.Option(*flag.decls, help=help, show_default=flag.show_default, rich_help_panel=panel)
    return inspect.Parameter(flag.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=flag.default,
                             annotation=Annotated[flag.type, info])
