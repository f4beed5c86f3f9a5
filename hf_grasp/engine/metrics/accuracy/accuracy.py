"""Classification accuracy as a local ``evaluate`` metric module.

``evaluate.load("accuracy")`` fetches the canonical script from a hub, which
these machines (and offline users) cannot reach. This file is the same metric
shipped inside hf_grasp and loaded by path::

    evaluate.load("/path/to/hf_grasp/engine/metrics/accuracy")

``evaluate`` resolves a directory to ``<dir>/<dirname>.py``, so this file's name
must stay equal to its folder's. It copies the script into its dynamic-modules
cache and imports it from there, so it may import only installed packages,
never hf_grasp itself.
"""

import datasets
import evaluate

_DESCRIPTION = """\
Accuracy is the proportion of correct predictions among all predictions:
(number of predictions equal to their reference) / (number of predictions).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): ground-truth class ids.
Returns:
    accuracy (`float`): fraction of predictions equal to their reference, in [0, 1].
Examples:
    >>> metric = evaluate.load("hf_grasp/engine/metrics/accuracy")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Top-1 accuracy over integer class ids."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int32"),
                    "references": datasets.Value("int32"),
                }
            ),
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            # An empty split has no accuracy; NaN says so without raising mid-run.
            return {"accuracy": float("nan")}
        correct = sum(int(p) == int(r) for p, r in zip(predictions, references))
        return {"accuracy": float(correct / len(predictions))}
