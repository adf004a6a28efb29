"""Generated sections of README.md: the text between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` belongs to a script (bench/make_tables.py, tools/lfw_tables.py)."""
import sys


def replace_sections(text, sections):
    """`text` with each named section's body replaced; SystemExit if a marker is missing."""
    for name, body in sections.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        i, j = text.find(begin), text.find(end)
        if i < 0 or j < i:
            raise SystemExit(f"README.md has no {begin} ... {end} section")
        text = text[:i + len(begin)] + "\n" + body + "\n" + text[j:]
    return text


def update_or_check(readme, sections, check, fix_command):
    """Rewrite the sections in the file `readme`, or (check) return 1 and say how to fix
    it when they differ from `sections`; 0 otherwise."""
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    updated = replace_sections(text, sections)
    if check:
        if updated != text:
            print(f"{readme}: the generated sections {sorted(sections)} are out of date: run "
                  f"{fix_command}", file=sys.stderr)
            return 1
        return 0
    with open(readme, "w", encoding="utf-8") as f:
        f.write(updated)
    return 0
