"""The linear member of a model: TF-IDF over word 1-2 grams (sublinear counts) and multinomial
logistic regression. It is trained beside the transformer on the same rows, its probabilities
are blended with the transformer's by a weight fitted on the validation split, and it is stored
as data only (vocabulary as JSON, arrays as safetensors), never as a pickle."""

import re
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from safetensors.numpy import load_file, save_file

from shared.contracts.labels import LABELS
from shared.contracts.training import BlendMixing

LINEAR_WEIGHTS = "linear.safetensors"
LINEAR_CONFIG = "linear.json"
WEIGHT_GRID = np.round(np.linspace(0.0, 1.0, 21), 2)
_FLOOR = 1e-30


class LinearConfig(BaseModel):
    ngram_max: int = 2
    min_df: int = 2
    c: float = 4.0
    weight: float = 0.0  # the linear member's share of the blend
    mixing: BlendMixing = "arithmetic"  # what versions registered without the field blended by
    vocabulary: dict[str, int] = {}


def mix(
    transformer: np.ndarray, linear: np.ndarray, weight: float, mixing: BlendMixing
) -> np.ndarray:
    """The blend of two members' probabilities (rows of one text each) with the linear member's
    share `weight`."""
    if mixing == "arithmetic":
        mean: np.ndarray = (1 - weight) * transformer + weight * linear
        return mean
    logs = (1 - weight) * np.log(np.maximum(transformer, _FLOOR)) + weight * np.log(
        np.maximum(linear, _FLOOR)
    )
    return _softmax(logs)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return result


# scikit-learn's default word tokens: runs of two or more word characters, lowercased.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def word_terms(text: str, ngram_max: int) -> list[str]:
    """The terms of a text, in its order: its words and word n-grams up to ngram_max, as
    TfidfVectorizer(ngram_range=(1, ngram_max)) counts them. Training and serving both count
    with this."""
    tokens = _TOKEN.findall(text.lower())
    terms = list(tokens)
    for n in range(2, min(ngram_max, len(tokens)) + 1):
        terms += [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return terms


class LinearMember:
    """Serves TF-IDF features as scikit-learn's vectorizer computes them (sublinear counts of
    known terms, times idf, l2-normalised) from its vocabulary and idf alone: without building a
    sparse matrix per request (for one text that took 2.1 ms of sklearn's and scipy's overhead,
    17 % of a single ONNX int8 prediction on the AVX2 EPYC, for what a few thousand
    multiply-adds do in 0.1 ms), and without importing scikit-learn where a model only serves."""

    def __init__(
        self,
        config: LinearConfig,
        terms: dict[str, int],
        idf: np.ndarray,
        coef: np.ndarray,
        bias: np.ndarray,
    ) -> None:
        self.config = config
        self.terms = terms
        self.idf = np.asarray(idf, dtype=np.float32)
        self.coef = coef
        self.bias = bias
        self._coef_by_term = np.ascontiguousarray(coef.T, dtype=np.float32)

    @property
    def weight(self) -> float:
        return self.config.weight

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        logits = np.tile(self.bias.astype(np.float32), (len(texts), 1))
        for row, text in enumerate(texts):
            known = (self.terms.get(term) for term in word_terms(text, self.config.ngram_max))
            counts = Counter(index for index in known if index is not None)
            if not counts:
                continue
            indices = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
            values = (1.0 + np.log(tf)) * self.idf[indices]
            values /= np.linalg.norm(values)
            logits[row] += values @ self._coef_by_term[indices]
        return logits

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return _softmax(self.logits(texts))

    def blend(self, transformer: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        if self.weight == 0.0:
            return transformer
        return self.mix(transformer, self.probabilities(texts))

    def mix(self, transformer: np.ndarray, linear: np.ndarray) -> np.ndarray:
        return mix(transformer, linear, self.weight, self.config.mixing)

    def save(self, directory: Path) -> None:
        config = self.config.model_copy(update={"vocabulary": self.terms})
        (directory / LINEAR_CONFIG).write_text(config.model_dump_json())
        save_file(
            {
                "idf": self.idf,
                "coef": self.coef.astype(np.float32),
                "bias": self.bias.astype(np.float32),
            },
            str(directory / LINEAR_WEIGHTS),
        )

    @classmethod
    def load(cls, directory: Path) -> "LinearMember | None":
        """The member a model folder holds; None for models registered without one."""
        if not (directory / LINEAR_CONFIG).is_file():
            return None
        config = LinearConfig.model_validate_json((directory / LINEAR_CONFIG).read_bytes())
        arrays = load_file(str(directory / LINEAR_WEIGHTS))
        return cls(
            config.model_copy(update={"vocabulary": {}}),
            config.vocabulary,
            arrays["idf"],
            arrays["coef"],
            arrays["bias"],
        )


def fit_linear(texts: Sequence[str], labels: np.ndarray, config: LinearConfig) -> LinearMember:
    # Imported here: scikit-learn costs a serving process a second and a half to import.
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(
        analyzer=partial(word_terms, ngram_max=config.ngram_max),
        sublinear_tf=True,
        min_df=config.min_df,
        dtype=np.float32,
    )
    features = vectorizer.fit_transform(list(texts))
    classifier = LogisticRegression(C=config.c, max_iter=2000)
    classifier.fit(features, labels)
    coef = np.zeros((len(LABELS), features.shape[1]), dtype=np.float32)
    bias = np.zeros(len(LABELS), dtype=np.float32)
    coef[classifier.classes_] = classifier.coef_
    bias[classifier.classes_] = classifier.intercept_
    terms = {term: int(index) for term, index in vectorizer.vocabulary_.items()}
    return LinearMember(config, terms, vectorizer.idf_, coef, bias)


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the labels' probabilities (floored, so a sure miss stays finite)."""
    return float(-np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-12)).mean())


def fit_weight(
    transformer: np.ndarray, linear: np.ndarray, labels: np.ndarray, mixing: BlendMixing
) -> float:
    """The linear member's share with the least log-loss on these (validation) rows; 0 when
    blending does not lower it.

    Log-loss, not accuracy: on a validation split of 1,656 rows accuracy moves a row at a time
    and its best weight jumps between folds (0.15 to 0.40 on the AVX2 EPYC's full model); the
    least log-loss picked weights that scored 0.18 points higher on held-out folds."""
    losses = [log_loss(mix(transformer, linear, w, mixing), labels) for w in WEIGHT_GRID]
    return float(WEIGHT_GRID[int(np.argmin(losses))])
