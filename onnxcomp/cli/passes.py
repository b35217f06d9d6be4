"""`onnxcomp passes`: every registered pass, its options and one-line description."""

import json

import click

from onnxcomp.cli.common import verbosity_options


@click.command("passes")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@verbosity_options
def command(as_json):
    """List every registered pass with its options."""
    from onnxcomp.cli.shortcuts import adding_flag, flag_for
    from onnxcomp.pipeline.options import describe
    from onnxcomp.pipeline.registry import all_passes

    listing = []
    for name, cls in all_passes().items():
        options = describe(cls.Options)
        for o in options:
            o["flag"] = flag_for(name, o["name"])  # the optimize shortcut that sets it, if any
        listing.append({"name": name, "exact": cls.exact, "description": cls.description(),
                        "flag": adding_flag(name), "options": options})
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for p in listing:
        kind = "exact" if p["exact"] else "lossy"
        added = f"  (optimize {p['flag']})" if p["flag"] else ""
        click.echo(f"{p['name']}  [{kind}]  {p['description']}{added}")
        for o in p["options"]:
            kind = o["type"] + (f", {o['range']}" if o["range"] else "")
            flag = f"  [{o['flag']}]" if o["flag"] else ""
            click.echo(f"    {o['name']}={o['default']}  ({kind})  {o['help']}{flag}")
