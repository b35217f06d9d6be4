"""Pipeline text: `cleanup,fold-bn,insert-qdq{method=entropy,per_channel=true}`.

Passes are separated by commas outside braces; options are `key=value` pairs inside
braces; list values are written `[a;b]`.
"""

from __future__ import annotations

from onnxcomp.errors import InputError
from onnxcomp.pipeline.options import build_options, format_options
from onnxcomp.pipeline.registry import get_pass

# Named presets expand to pipeline text; `onnxcomp optimize --print-pipeline` shows the expansion.
PRESETS = {
    "default": "cleanup,fold-bn",
    "int8-ort": "cleanup,fold-bn,insert-qdq{target=ort}",
    "int8-tensorrt": "cleanup,fold-bn,insert-qdq{target=tensorrt}",
    "int8-transformer": "cleanup,smooth-quant,insert-qdq{embeddings=true}",  # target from --target (default ort)
    "slim": "cleanup,remove-channels{ratio=0.5,round_to=8},fold-bn",  # prune with BN kept, then fold
    "sparse-2of4": "cleanup,fold-bn,sparsify-initializers{sparsity=2:4}",
}


def expand_presets(text: str) -> str:
    """Replace preset names (entries without options) by their pipeline text."""
    chunks = [c.strip() for c in split_top_level(text.strip())]
    return ",".join(PRESETS.get(c, c) for c in chunks)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise InputError(f"pipeline: unbalanced {ch!r} at position {i}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise InputError("pipeline: unclosed '{' or '['")
    parts.append(text[start:])
    return parts


def parse_pipeline(text: str) -> list:
    """Parse pipeline text into pass instances with typed options."""
    if not text or not text.strip():
        raise InputError("pipeline: empty; name at least one pass")
    passes = []
    for chunk in split_top_level(expand_presets(text)):
        chunk = chunk.strip()
        if not chunk:
            raise InputError(f"pipeline: empty entry in {text!r}")
        name, values = chunk, {}
        if "{" in chunk:
            name, _, rest = chunk.partition("{")
            if not rest.endswith("}"):
                raise InputError(f"pipeline: {chunk!r} must end with '}}'")
            body = rest[:-1].strip()
            for item in split_top_level(body) if body else []:
                key, eq, value = item.partition("=")
                if not eq or not key.strip():
                    raise InputError(f"pipeline: option {item.strip()!r} of {name.strip()!r} must be key=value")
                values[key.strip()] = value.strip()
        name = name.strip()
        cls = get_pass(name)
        passes.append(cls(build_options(cls.Options, values, name)))
    return passes


def format_pipeline(passes) -> str:
    return ",".join(p.name + format_options(p.options) for p in passes)
