"""``benchmarks/RESULTS.md`` holds one section per benchmark script, each between markers the script rewrites (the
other sections are kept), so every figure there comes from the command its section names."""

import re
from pathlib import Path

from pointgst.atomic import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ORDER = ("modelnet40_methods", "modelnet40_forward_methods", "train_step", "adapter_overhead", "demo_time")
TITLE = ("# Benchmarks\n\nEach section is written by the script it names; rerunning a script rewrites only its "
         "section.\n")


def write_section(name: str, text: str, path: Path = RESULTS) -> None:
    """Put ``text`` between the markers of section ``name`` in ``path`` (sections in :data:`ORDER`)."""
    current = path.read_text() if path.is_file() else ""
    sections = {key: body for key, body in re.findall(r"<!-- begin (\w+) -->\n(.*?)<!-- end \1 -->", current, re.S)}
    sections[name] = text.rstrip() + "\n"
    names = [n for n in ORDER if n in sections] + sorted(n for n in sections if n not in ORDER)
    body = "\n".join(f"<!-- begin {n} -->\n{sections[n]}<!-- end {n} -->\n" for n in names)
    write_text_atomic(path, f"{TITLE}\n{body}")
