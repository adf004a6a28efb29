"""``{"class_name": ..., "config": ...}`` round trips shared by losses and optimizers."""


def serialize(obj, base, kind: str) -> dict:
    """``{"class_name": type(obj).__name__, "config": obj.get_config()}``."""
    if not isinstance(obj, base):
        raise TypeError(f"serialize expects {kind}, got {type(obj).__name__}")
    return {"class_name": type(obj).__name__, "config": obj.get_config()}


def deserialize(d, classes: dict, kind: str):
    """Inverse of :func:`serialize`; a class not in ``classes`` -> ValueError."""
    if not isinstance(d, dict) or d.get("class_name") not in classes:
        raise ValueError(f"unknown {kind} {d!r:.100}; known classes: {sorted(classes)}")
    return classes[d["class_name"]].from_config(dict(d.get("config") or {}))
