"""`onnxcomp passes`: every registered pass, its options and one-line description."""

import json

import click


@click.command("passes")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def command(as_json):
    """List every registered pass with its options."""
    from onnxcomp.pipeline.options import describe
    from onnxcomp.pipeline.registry import all_passes

    listing = [{"name": name, "exact": cls.exact, "description": cls.description(),
                "options": describe(cls.Options)} for name, cls in all_passes().items()]
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for p in listing:
        kind = "exact" if p["exact"] else "lossy"
        click.echo(f"{p['name']}  [{kind}]  {p['description']}")
        for o in p["options"]:
            click.echo(f"    {o['name']}={o['default']}  ({o['type']})  {o['help']}")
