"""Names from users and files made safe to print: no terminal control sequences.

A layer name, a file name or a key read from a model file can hold an escape character
(ESC ``[2J`` clears a terminal, ESC ``]0;...`` sets its title, a bidi override reverses the
text shown after it). Whatever cconv prints or draws of such text goes through
:func:`printable` first.
"""


def printable(text):
    """``text`` with each character that ``str.isprintable`` refuses (control characters,
    line breaks, format characters such as bidi overrides) written as its Python escape:
    ``"a\\x1b[2J"`` for ``"a<ESC>[2J"``."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
