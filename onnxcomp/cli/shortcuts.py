"""`optimize`'s shortcut flags: a table of flag -> (pass, option), typed from the Options dataclasses.

Each flag's click type, choices, range and help come from its Options field, so the flags cannot
drift from the pipeline text or from `onnxcomp passes`. Three kinds:

- adding flags (--prune-channels, --sparsify, --quantize) add their pass, in that order, after the
  pipeline but before any pass that must come later (MUST_PRECEDE): remove-channels goes before
  fold-bn, so channels are ranked and sliced with BatchNorm still there and a distilled student keeps
  a BN to recover with, and prune and sparsify go before insert-qdq, so it sees the final weights; a
  pipeline that already has the pass (a preset such as int8-ort) is refused rather than doubled;
- option flags (--importance, --round-to, --global, --sparsify-scope, --calib-method, --calib-stats,
  --target) set that option of their pass wherever it came from, --passes text or an adding flag; a
  pipeline without the pass is refused;
- shared flags (--exclude, --exclude-op, --max-drop) set the option on every pass in the pipeline
  that has it; a pipeline with none is refused.

A flag never overrides a different value the --passes text gave explicitly: that is refused too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_origin

import click

from onnxcomp.errors import InputError
from onnxcomp.pipeline.options import (
    choices_of,
    default_of,
    format_value,
    option_fields,
    unwrap_optional,
    with_option,
)
from onnxcomp.pipeline.registry import all_passes

# flag -> (pass name, or None for every pass with the option; Options field, or None for the pass itself)
SHORTCUTS: dict[str, tuple[str | None, str | None]] = {
    "--prune-channels": ("remove-channels", "ratio"),
    "--importance": ("remove-channels", "importance"),
    "--round-to": ("remove-channels", "round_to"),
    "--global": ("remove-channels", "global_ranking"),
    "--lowrank": ("factorize-lowrank", "kept"),
    "--sparsify": ("sparsify-initializers", "sparsity"),
    "--sparsify-scope": ("sparsify-initializers", "scope"),
    "--quantize": ("insert-qdq", None),
    "--calib-method": ("insert-qdq", "method"),
    "--smooth": ("smooth-quant", None),
    "--quantize-embeddings": ("insert-qdq", "embeddings"),
    "--bias-correction": ("insert-qdq", "bias_correction"),
    "--calib-stats": ("insert-qdq", "stats"),
    "--calib-cache": ("insert-qdq", "calib_cache"),
    "--objective": ("quantize-auto", "objective"),
    "--target": (None, "target"),
    "--exclude": (None, "exclude"),
    "--exclude-op": (None, "exclude_op"),
    "--max-drop": (None, "max_drop"),
}
# in the order their passes are added
ADDING = ("--prune-channels", "--lowrank", "--sparsify", "--quantize", "--smooth")
# pass an adding flag adds -> passes it is placed before when the pipeline has them. Lossy structural
# passes run before BatchNorm folding: `cleanup,fold-bn,remove-channels` left a student that
# distillation recovered to 0.76 accuracy on the digits CNN, against 0.994 with BN kept.
MUST_PRECEDE = {
    "remove-channels": ("fold-bn", "sparsify-initializers", "smooth-quant", "insert-qdq", "quantize-dynamic",
                        "convert-float16",
                        "quantize-int4-weights", "quantize-auto"),
    "factorize-lowrank": ("fold-bn", "sparsify-initializers", "smooth-quant", "insert-qdq", "quantize-dynamic",
                          "convert-float16",
                          "quantize-int4-weights", "quantize-auto"),
    "sparsify-initializers": ("smooth-quant", "insert-qdq", "quantize-dynamic", "convert-float16",
                              "quantize-int4-weights", "quantize-auto"),
    "smooth-quant": ("insert-qdq",),  # it rescales the float weights that insert-qdq then quantizes
}
# --quantize names a number format, not an option: format -> (the pass it adds, options it sets there).
QUANTIZE_FORMATS: dict[str, tuple[str, dict[str, str]]] = {
    # static, calibrated Q/DQ (needs --calib); smooth-quant's folds and INT8 embedding tables where they
    # apply (transformers; a CNN has neither): on MiniLM cosine 0.9928 -> 0.9978 and 58.7 -> 23.1 MB
    "int8": ("insert-qdq", {"smooth": "true", "embeddings": "true"}),
    "dynamic": ("quantize-dynamic", {}),             # INT8 weights, activations quantized at run time
    "fp16": ("convert-float16", {}),
    "bf16": ("convert-float16", {"dtype": "bfloat16"}),
    "int4": ("quantize-int4-weights", {}),           # block-wise INT4 weights
    "auto": ("quantize-auto", {}),                   # per layer int8/int4/fp16/float within --max-drop
}
QUANTIZE_CHOICES = tuple(QUANTIZE_FORMATS)


def param_name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def passes_with(option: str) -> list[str]:
    """Names of the registered passes whose Options have `option`."""
    return [name for name, cls in all_passes().items()
            if any(f.name == option for f in dataclasses.fields(cls.Options))]


def field_of(flag: str) -> tuple[dataclasses.Field, Any]:
    """The Options field (and its annotation) behind a flag; shared flags read the first pass that has
    it (every pass declares a shared option with the same field helper, so they are alike)."""
    name, option = SHORTCUTS[flag]
    cls = all_passes()[name or passes_with(option)[0]]
    return next((f, hint) for f, hint in option_fields(cls.Options) if f.name == option)


def flag_for(pass_name: str, option: str) -> str | None:
    """The flag that sets `option` of `pass_name`, if any."""
    for flag, (name, field_name) in SHORTCUTS.items():
        if field_name == option and (name == pass_name or (name is None and option in _fields(pass_name))):
            return flag
    return None


def adding_flag(pass_name: str) -> str | None:
    """The flag that adds `pass_name` to the pipeline, if any."""
    if any(name == pass_name for name, _ in QUANTIZE_FORMATS.values()):
        return "--quantize"
    return next((flag for flag in ADDING if SHORTCUTS[flag][0] == pass_name), None)


def _fields(pass_name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(all_passes()[pass_name].Options)}


def _role(flag: str) -> str:
    name, option = SHORTCUTS[flag]
    if name is None:
        return f"Sets {option} of every pass in the pipeline that has it ({', '.join(passes_with(option))})."
    if flag in ADDING:
        return (f"Adds {name}{'' if option is None else f'{{{option}=...}}'} after the pipeline; "
                f"an error if --passes already has {name}.")
    return (f"Sets {name}.{option} of the {name} in the pipeline (from --passes or {adding_flag(name)}); "
            "an error without one.")


def click_kwargs(flag: str) -> dict[str, Any]:
    """click.option arguments for a shortcut: type, choices, range and help from its Options field."""
    name, option = SHORTCUTS[flag]
    if option is None and flag != "--quantize":  # a flag that adds its pass with default options
        return {"is_flag": True, "help": f"{all_passes()[name].description()} {_role(flag)}"}
    if option is None:
        formats = ", ".join(f"{value} ({name}{format_options_text(preset)})"
                            for value, (name, preset) in QUANTIZE_FORMATS.items())
        return {"type": click.Choice(QUANTIZE_CHOICES),
                "help": f"Number format, each by its pass: {formats}; int8 is static and needs --calib. Adds that "
                        "pass after the pipeline; an error if --passes already has it."}
    f, hint = field_of(flag)
    text, valid = f.metadata.get("help", ""), f.metadata.get("range")
    kwargs: dict[str, Any] = {"help": f"{text[:1].upper()}{text[1:]}." + (f" Must be {valid}." if valid else "")
                              + f" {_role(flag)}"}
    metavar = f.metadata.get("metavar", option.upper())
    base = unwrap_optional(hint)
    if choices_of(base):
        kwargs["type"] = click.Choice([str(c) for c in choices_of(base)])
    elif base is bool:
        kwargs["is_flag"] = True
    elif get_origin(base) is tuple:
        kwargs.update(multiple=True, metavar=metavar, help=kwargs["help"] + " Repeatable.")
    else:
        kwargs.update(type=base, metavar=metavar)
    return kwargs


def shortcut_options(command):
    """Decorate `optimize` with one click option per shortcut flag."""
    for flag in reversed(list(SHORTCUTS)):
        command = click.option(flag, param_name(flag), **click_kwargs(flag))(command)
    return command


def apply_shortcuts(passes: list, values: dict[str, Any], pipeline_text: str) -> list:
    """`passes` (parsed from --passes) with the given shortcut flags applied, or one InputError line.

    `values` maps click parameter names to what click passed (None, () or False when not given).
    """
    given = {flag: values.get(param_name(flag)) for flag in SHORTCUTS}
    given = {flag: v for flag, v in given.items() if v is not None and v is not False and v != ()}
    passes = list(passes)
    from_text = [True] * len(passes)  # parallel to passes: given in the --passes text
    for flag in ADDING:
        if flag not in given:
            continue
        name, option = SHORTCUTS[flag]
        preset = {}
        if flag == "--quantize":
            name, preset = QUANTIZE_FORMATS[given[flag]]
        if any(p.name == name for p in passes):
            raise InputError(f"{flag} adds {name}, but --passes {pipeline_text!r} already has {name}: give one of "
                             "them (set its options in the text, or with the option flags)")
        fresh = all_passes()[name]()
        for key, value in preset.items():
            if key == "smooth" and ("--smooth" in given or any(p.name == "smooth-quant" for p in passes)):
                continue  # the smooth-quant pass the pipeline has does it (with its own options)
            fresh = type(fresh)(_set(fresh, flag, key, value))
        at = next((i for i, p in enumerate(passes) if p.name in MUST_PRECEDE.get(name, ())), len(passes))
        passes.insert(at, fresh if option is None else type(fresh)(_set(fresh, flag, option, given[flag])))
        from_text.insert(at, False)
    for flag, value in given.items():
        name, option = SHORTCUTS[flag]
        if flag in ADDING:
            continue
        hits = [i for i, p in enumerate(passes) if (p.name == name if name else option in _fields(p.name))]
        if not hits:
            present = ", ".join(p.name for p in passes)
            if name is None:
                raise InputError(f"{flag}: no pass in the pipeline ({present}) has {option}; it applies to "
                                 f"{', '.join(passes_with(option))}")
            raise InputError(f"{flag} sets {name}.{option}, but the pipeline ({present}) has no {name}; "
                             f"add it with {adding_flag(name)} or in --passes")
        for i in hits:
            p = passes[i]
            new = _set(p, flag, option, value)
            current, default = getattr(p.options, option), default_of(_field(p, option))
            if from_text[i] and current != default and current != getattr(new, option):
                raise InputError(f"{flag} {format_value(value)} contradicts {p.name}{{{option}="
                                 f"{format_value(current)}}} from --passes {pipeline_text!r}: give it once")
            passes[i] = type(p)(new)
    return passes


def format_options_text(preset: dict[str, str]) -> str:
    return "{" + ",".join(f"{k}={v}" for k, v in preset.items()) + "}" if preset else ""


def _set(p, flag: str, option: str, value: Any):
    try:
        return with_option(p.options, option, value, p.name)
    except InputError as exc:
        raise InputError(f"{flag}: {exc}") from None


def _field(p, option: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(p.options) if f.name == option)
