#!/usr/bin/env python3
"""Regenerates the tree block of docs/locking.md from src/Hetmem/LockOrder.cs (run from the repository root).

The tree between <code> and </code> in LockOrder.cs's remarks is copied verbatim into the ```text block of
docs/locking.md; tests/Hetmem.Tests/Docs/LayerDocExamplesTests.cs fails when the two differ."""
import re, sys
src = open("src/Hetmem/LockOrder.cs").read()
m = re.search(r"/// <code>\n(.*?)/// </code>", src, re.S)
if not m:
    sys.exit("LockOrder.cs has no <code> tree")
tree = "\n".join(l[4:] if l.startswith("/// ") else l.lstrip("/") for l in m.group(1).split("\n") if l.strip())
doc = open("docs/locking.md").read()
new, n = re.subn(r"```text\n.*?```", lambda _: "```text\n" + tree + "\n```", doc, count=1, flags=re.S)
if n != 1:
    sys.exit("docs/locking.md has no ```text block")
open("docs/locking.md", "w").write(new)
print("docs/locking.md: tree regenerated from src/Hetmem/LockOrder.cs")
