"""Classification metrics: for ``compile(metrics=[...])`` and as plain functions.

``compile`` takes names or :class:`Metric` objects:

=====================  ==============================================  ==================
name (aliases)         what                                            class
=====================  ==============================================  ==================
``"accuracy"``         fraction of correct predictions                 :class:`Accuracy`
(``"acc"``)
``"top_k_accuracy"``   the true class is among the ``k`` highest       :class:`TopKAccuracy`
                       scores (k = 5; Keras's
                       ``"top_k_categorical_accuracy"`` too)
``"precision"``        macro-averaged precision                        :class:`Precision`
``"recall"``           macro-averaged recall                           :class:`Recall`
``"f1"``               macro-averaged F1 (``"f1_score"``)               :class:`F1Score`
=====================  ==============================================  ==================

A metric accumulates over an epoch (``fit``) or over all batches (``evaluate``): precision,
recall and F1 come from the confusion matrix of all the samples, not from a mean of batch
values. They follow scikit-learn's ``average="macro"``: the mean over the classes that occur
among the targets or the predictions, a class never predicted having precision 0 (``zero_
division=0``). For one sigmoid output (``(N, 1)``) the classes are 0 and 1, predicted by a
threshold (0.5 on probabilities, 0 on logits). Sample weights do not enter the metrics
(Keras's ``metrics``, not ``weighted_metrics``).

:func:`confusion_matrix` and :func:`cconv.viz.plot_confusion_matrix` give the whole matrix.
"""
import numpy as np

from . import _validate as V

__all__ = ["Metric", "merged", "Accuracy", "TopKAccuracy", "Precision", "Recall", "F1Score",
           "confusion_matrix", "top_k_accuracy", "precision_recall_f1", "get", "serialize",
           "higher_is_better"]


def _labels(y, k):
    """Class indices from integer labels (N,) / (N, 1) or one-hot rows (N, K)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == k and k > 1:
        return np.argmax(y, axis=1)
    y = y.reshape(len(y), -1)[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise ValueError(f"targets must be labels (N,) or one-hot rows (N, {k}), got shape {y.shape}")
    if y.dtype.kind == "f":
        y = np.rint(y) if k > 1 else (y > 0.5)
    return y.astype(np.int64)


def _predicted(pred, threshold):
    """Predicted classes and the number of classes of scores (N, K) or one output (N, 1)."""
    pred = np.asarray(pred)
    if pred.ndim == 2 and pred.shape[1] > 1:
        return np.argmax(pred, axis=1), pred.shape[1]
    if pred.ndim in (1, 2):
        return (pred.reshape(len(pred)) > threshold).astype(np.int64), 2
    raise ValueError(f"predictions must have shape (N, classes) or (N, 1), got {pred.shape}")


def _threshold(loss):
    return 0.0 if getattr(loss, "from_logits", False) else 0.5


def confusion_matrix(y_true, y_pred, num_classes=None):
    """``C[i, j]``: the number of samples of class ``i`` predicted as class ``j``.

    Parameters
    ----------
    y_true : ndarray of int of shape (N,), or one-hot rows (N, K)
    y_pred : ndarray of shape (N,) of classes, or (N, K) scores (their argmax)
    num_classes : int, optional
        Default: the number of score columns, else the largest class + 1.

    Returns
    -------
    ndarray of int64 of shape (K, K)
    """
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2 and y_pred.shape[1] > 1:
        k = y_pred.shape[1]
        pred = np.argmax(y_pred, axis=1)
    else:
        pred = y_pred.reshape(len(y_pred)).astype(np.int64)
        k = None
    if num_classes is not None:
        k = V.positive_int(num_classes, "num_classes")
    true = _labels(y_true, k if k is not None else 0)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.shape[0]} samples, y_pred {pred.shape[0]}")
    if k is None:
        k = int(max(true.max(initial=-1), pred.max(initial=-1))) + 1
    for what, v in (("y_true", true), ("y_pred", pred)):
        if v.size and (v.min() < 0 or v.max() >= k):
            raise ValueError(f"{what} has classes outside [0, {k}): {np.unique(v[(v < 0) | (v >= k)])[:5].tolist()}")
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def precision_recall_f1(cm):
    """Macro precision, recall and F1 of a confusion matrix (scikit-learn's
    ``average="macro"``, ``zero_division=0``: over the classes present in the targets or
    the predictions)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    present = (predicted + actual) > 0
    if not present.any():
        return 0.0, 0.0, 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(predicted > 0, tp / predicted, 0.0)
        r = np.where(actual > 0, tp / actual, 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(p[present].mean()), float(r[present].mean()), float(f[present].mean())


def top_k_accuracy(pred, y, k=5):
    """Fraction of samples whose true class is among the ``k`` highest scores of ``pred``
    (N, K); a tie with the true class's score counts for it."""
    pred = np.asarray(pred)
    if pred.ndim != 2:
        raise ValueError(f"top_k_accuracy needs scores of shape (N, classes), got {pred.shape}")
    labels = _labels(y, pred.shape[1])
    true_score = pred[np.arange(len(pred)), labels]
    better = np.sum(pred > true_score[:, None], axis=1)
    return float(np.mean(better < k)) if len(pred) else 0.0


class Metric:
    """A metric accumulated over batches: :meth:`reset`, :meth:`update`, :meth:`result`.

    ``update(pred, y, loss=None)`` gets what the output's loss receives (logits when the
    final softmax is fused into the loss: argmax and top-k do not change) and that loss
    (a one-output sigmoid is thresholded at 0 when the loss takes logits, at 0.5
    otherwise). ``result()`` is None when the metric does not apply to the output (e.g.
    accuracy of a regression).
    """

    #: The key in the logs (``val_`` and per-output prefixes are added by ``fit``).
    name = ""

    def __init__(self, name=None):
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"name must be a non-empty str, got {name!r}")
            self.name = name
        self.reset()

    def reset(self):
        raise NotImplementedError

    def update(self, pred, y, loss=None):
        raise NotImplementedError

    def result(self):
        raise NotImplementedError

    def merge(self, other):
        """Add the samples ``other`` (the same kind of metric, e.g. another process's) has
        accumulated to this metric's."""
        raise NotImplementedError(f"{type(self).__name__} cannot merge the results of several "
                                  f"processes: define merge(other)")

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        cfg = {k: v for k, v in self.get_config().items() if not (k == "name" and v == type(self).name)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in cfg.items())})"


class Accuracy(Metric):
    """Fraction of correct predictions (argmax of ``(N, K)`` scores, a threshold for one
    output), as :func:`cconv.losses.accuracy`."""

    name = "accuracy"

    def reset(self):
        self.correct, self.count, self.applies = 0.0, 0, True

    def update(self, pred, y, loss=None):
        pred = np.asarray(pred)
        if loss is not None and hasattr(loss, "accuracy"):
            acc = loss.accuracy(pred, y)
        elif pred.ndim == 2:
            from .losses import accuracy
            acc = accuracy(pred, y, threshold=_threshold(loss))
        else:
            acc = None
        if acc is None:
            self.applies = False
            return
        self.correct += float(acc) * len(pred)
        self.count += len(pred)

    def result(self):
        if not self.applies or not self.count:
            return None
        return self.correct / self.count

    def merge(self, other):
        self.correct += other.correct
        self.count += other.count
        self.applies = self.applies and other.applies


class TopKAccuracy(Metric):
    """The true class is among the ``k`` highest scores (Keras's
    ``top_k_categorical_accuracy``); see :func:`top_k_accuracy`."""

    name = "top_k_accuracy"

    def __init__(self, k=5, name=None):
        self.k = V.positive_int(k, "k")
        super().__init__(name)

    def reset(self):
        self.correct, self.count = 0.0, 0

    def update(self, pred, y, loss=None):
        pred = np.asarray(pred)
        if pred.ndim != 2 or pred.shape[1] < 2:
            raise ValueError(f"{self.name} needs an output of class scores (N, classes), got {pred.shape}")
        self.correct += top_k_accuracy(pred, y, self.k) * len(pred)
        self.count += len(pred)

    def result(self):
        return self.correct / self.count if self.count else None

    def merge(self, other):
        self.correct += other.correct
        self.count += other.count

    def get_config(self):
        return {"k": self.k, **super().get_config()}


class _FromConfusion(Metric):
    """A metric of the confusion matrix of every sample seen since :meth:`reset`."""

    _index = 0          # which of precision_recall_f1's values

    def reset(self):
        self.matrix = None

    def update(self, pred, y, loss=None):
        classes, k = _predicted(pred, _threshold(loss))
        cm = confusion_matrix(_labels(y, k), classes, num_classes=k)
        self.matrix = cm if self.matrix is None else self.matrix + cm

    def result(self):
        return None if self.matrix is None else precision_recall_f1(self.matrix)[self._index]

    def merge(self, other):
        if other.matrix is not None:
            self.matrix = other.matrix.copy() if self.matrix is None else self.matrix + other.matrix


class Precision(_FromConfusion):
    """Macro-averaged precision (scikit-learn's ``precision_score(average="macro")``)."""

    name = "precision"
    _index = 0


class Recall(_FromConfusion):
    """Macro-averaged recall (scikit-learn's ``recall_score(average="macro")``)."""

    name = "recall"
    _index = 1


class F1Score(_FromConfusion):
    """Macro-averaged F1 (scikit-learn's ``f1_score(average="macro")``)."""

    name = "f1"
    _index = 2


_NAMES = {"accuracy": Accuracy, "acc": Accuracy, "top_k_accuracy": TopKAccuracy,
          "top_k_categorical_accuracy": TopKAccuracy,
          "sparse_top_k_categorical_accuracy": TopKAccuracy, "precision": Precision,
          "recall": Recall, "f1": F1Score, "f1_score": F1Score}
_CLASSES = {c.__name__: c for c in (Accuracy, TopKAccuracy, Precision, Recall, F1Score)}


def get(spec):
    """A new :class:`Metric` from a name, a Metric (a fresh copy), or :func:`serialize`'s dict."""
    if isinstance(spec, Metric):
        return type(spec).from_config(spec.get_config())
    if isinstance(spec, str):
        cls = _NAMES.get(spec.lower())
        if cls is None:
            raise ValueError(f"unknown metric {spec!r}; available: {sorted(_NAMES)} or a "
                             f"cconv.metrics.Metric")
        return cls()
    if isinstance(spec, dict) and spec.get("class_name") in _CLASSES:
        return _CLASSES[spec["class_name"]].from_config(dict(spec.get("config") or {}))
    raise TypeError(f"a metric is a name or a cconv.metrics.Metric, got {spec!r:.80}")


def merged(metrics):
    """A new metric holding the samples of ``metrics`` (of one kind), merged in order."""
    out = get(metrics[0])
    for m in metrics:
        out.merge(m)
    return out


def serialize(metric):
    """What a model file stores for a metric: its name for the default settings of a named
    metric, else ``{"class_name", "config"}``."""
    m = get(metric)
    if m.get_config() == type(m)().get_config():
        return m.name
    return {"class_name": type(m).__name__, "config": m.get_config()}


def higher_is_better(key):
    """Whether a log key names a metric to maximise (accuracy, precision, recall, F1)."""
    base = key[4:] if key.startswith("val_") else key
    return any(w in base for w in ("acc", "precision", "recall", "f1", "auc"))
